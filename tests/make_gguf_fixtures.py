"""Regenerates tests/fixtures/gguf/: tiny GGUF files and what HF transformers makes of them.

Needs torch (not a jaxcode dependency); run it from the side virtualenv:
  /work/torchvenv/bin/pip install torch==2.13.0 transformers==5.24.0 gguf==0.19.0 sentencepiece
  /work/torchvenv/bin/python tests/make_gguf_fixtures.py \
      [--gemma GEMMA.gguf] [--smollm SMOLLM.gguf] [--skip-tiny]
where the real files come from the jaxcode environment:
  python -c "from jaxcode.models.lm.gguf import package_path as p; print(p('gemma3-270m'))"
  python -c "from jaxcode.models.lm.gguf import package_path as p; print(p('smollm2-135m'))"

Writes
  tiny_llama.gguf, tiny_gemma3.gguf   random-weight 2- and 6-layer models written the way
      llama.cpp's converter writes them (Llama Q/K rows interleaved per head, Gemma norm gains
      stored as 1 + w), with a small tokenizer in the metadata and a mix of tensor types
      (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 via gguf.quants.quantize);
  tiny_<name>_reference.safetensors   transformers' own GGUF loader's result
      (AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)): its state_dict, its logits
      on the tokenised TEXTS[0], and the ids;
  tokenizer_reference.json   AutoTokenizer.from_pretrained(dir, gguf_file=...) ids on TEXTS for
      the tiny files and (with --gemma/--smollm) the real ones; for SmolLM2 also the ids with
      llama.cpp's 'smollm' pre-tokenizer put into that tokenizer (transformers lacks it);
  rope_reference.json   transformers' llama3 and default RoPE inverse frequencies for three
      parameter sets (their ratio is llama.cpp's rope_freqs.weight);
  <gemma3-270m|smollm2-135m>_hf_reference.safetensors   the real models' HF float32 eager
      forward on PROMPTS: raw outputs of blocks 0, 8 and the last (forward hooks on
      model.model.layers[i]) at positions 0, 5 and the last, the top-20 logits at the last
      position, the input ids; sampled values (and sums) of every HF weight tensor; and, as
      metadata, the next-token loss on PROSE and greedy 10-token continuations.
"""

import argparse
import json
import os
import shutil
import tempfile

import gguf
import numpy as np
import torch
import transformers
from gguf import GGMLQuantizationType as Q
from safetensors.numpy import save_file
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "gguf")

# Tokenizer agreement set: code, CJK, emoji, accents, whitespace runs, digits, special strings.
TEXTS = [
    "Hello world! The quick brown fox jumps over the lazy dog.",
    "def add(a, b):\n    return a + b  # sum\n\nprint(add(2, 3))",
    "for (int i = 0; i < 10; ++i) {\n\tx[i] = i * 2;\n}",
    "Numbers: 0 7 42 123 2024 3.14159 1,000,000 and 0x1F; 12345678901234567890",
    "Caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u2014 d\u00e9j\u00e0 vu, \u00c5ngstr\u00f6m, "
    "fa\u00e7ade, "
    "e\u0301 (combining)",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3068\u4e2d\u6587\u6587\u672c\uff0c"
    "\u8fd8\u6709\ud55c\uad6d\uc5b4.",
    "Emoji: \U0001F642\U0001F680\U0001F469\u200d\U0001F4BB \U0001F1EB\U0001F1F7 \u2764\ufe0f",
    "tabs\tand\t\ttabs   spaces    runs\n\n\nnewlines\r\nCRLF",
    "   leading spaces and trailing   ",
    "<start_of_turn>user\nHi<end_of_turn>\n<|im_start|>assistant<|im_end|> <bos> <|endoftext|>",
    "",
    "x",
    "ALLCAPS camelCaseWord snake_case_word kebab-case-word <think>",
    "URL https://example.com/path?query=1&b=2 e-mail someone@example.org",
    "a = [1,  2,   3]\n    42 items\t\t7 tabs",  # whitespace runs before digits
]
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
    "Once upon a time, in a small village at the edge of a great forest, there lived an old "
    "clockmaker who repaired every clock in the valley. One winter morning, a stranger arrived "
    "carrying a broken pocket watch, and",
]
PROSE = ("The river had been rising for three days. By the time the bridge keeper noticed the "
         "water touching the lowest beam, the village had already moved its animals to the "
         "hill, and the children watched from the church steps as the current carried branches, "
         "barrels and a single red boat downstream.")
CORPUS = (
    "the model reads a token and writes a token . the layer adds the residual stream . "
    "attention heads move information between positions ; the mlp stores facts . "
    "def forward(x):\n    return layer(x) + x\n\n"
    "sparse features in small models are easy to see . hello world , hello there . "
) * 3


# --------------------------------------------------------------------------- tokenizers

def byte_level_vocab():
  """A tiny byte-level BPE (Llama 3 style) trained on CORPUS: (tokens, types, merges)."""
  split = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
           r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
  from tokenizers import Regex
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(split), behavior="isolated"),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  trainer = trainers.BpeTrainer(vocab_size=256 + 40, show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator([CORPUS], trainer)
  j = json.loads(tok.to_str())["model"]
  tokens = [t for t, _ in sorted(j["vocab"].items(), key=lambda kv: kv[1])]
  merges = [" ".join(m) if isinstance(m, list) else m for m in j["merges"]]
  types = [1] * len(tokens)
  for t, ty in (("<|begin_of_text|>", 3), ("<|end_of_text|>", 3), ("<think>", 4)):
    tokens.append(t)
    types.append(ty)
  return tokens, types, merges


def sentencepiece_vocab():
  """A tiny Gemma-style vocabulary: controls, user-defined runs (spaces stored as real spaces),
  byte-fallback tokens, then pieces trained on CORPUS (space written as U+2581), merge order
  first. Scores follow the file order as in Gemma files. Returns (tokens, scores, types)."""
  head = [("<pad>", 3), ("<eos>", 3), ("<bos>", 3), ("<unk>", 2), ("<mask>", 3),
          ("[multimodal]", 4), ("<start_of_turn>", 3), ("<end_of_turn>", 3), ("\n", 4),
          ("\n\n", 4), ("  ", 4), ("   ", 4), ("\t\t", 4), ("<b>", 4), ("<unused0>", 3)]
  head += [(f"<0x{b:02X}>", 6) for b in range(256)]
  tok = Tokenizer(models.BPE())
  tok.normalizer = normalizers.Replace(" ", "\u2581")
  tok.pre_tokenizer = pre_tokenizers.Split("\u2581", behavior="merged_with_next")
  trainer = trainers.BpeTrainer(vocab_size=120, show_progress=False)
  tok.train_from_iterator([CORPUS], trainer)
  j = json.loads(tok.to_str())["model"]
  merged = ["".join(m) if isinstance(m, list) else m.replace(" ", "") for m in j["merges"]]
  singles = sorted(t for t in j["vocab"] if len(t) == 1)
  seen, pieces = set(t for t, _ in head), []
  for t in merged + singles + list("\u00e9\u65e5"):
    if t not in seen:
      seen.add(t)
      pieces.append(t)
  tokens = [t for t, _ in head] + pieces
  types = [ty for _, ty in head] + [1] * len(pieces)
  scores = [-1000.0] * len(head) + [-float(i) for i in range(len(pieces))]
  return tokens, scores, types


# --------------------------------------------------------------------------- models

def randomize(model, seed):
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if p.ndim == 1 and "norm" in name:
        p.copy_(0.1 * torch.randn(p.shape, generator=g) + (0.0 if "gemma" in
                type(model).__name__.lower() else 1.0))
      else:
        p.copy_(0.2 * torch.randn(p.shape, generator=g))


def llama_permute(w, n_head):
  """llama.cpp's converter: within each head, interleave the two rotary halves."""
  return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(
      w.shape)


def add(writer, name, arr, qtype):
  arr = np.ascontiguousarray(arr, np.float32)
  if qtype == Q.F32:
    writer.add_tensor(name, arr)
  elif qtype == Q.F16:
    writer.add_tensor(name, arr.astype(np.float16))
  else:
    writer.add_tensor(name, gguf.quants.quantize(arr, qtype), raw_dtype=qtype)


def write_tokenizer_llama_bpe(w, tokens, types, merges):
  w.add_tokenizer_model("gpt2")
  w.add_tokenizer_pre("llama-bpe")
  w.add_token_list(tokens)
  w.add_token_types(types)
  w.add_token_merges(merges)
  w.add_bos_token_id(tokens.index("<|begin_of_text|>"))
  w.add_eos_token_id(tokens.index("<|end_of_text|>"))
  w.add_pad_token_id(tokens.index("<|end_of_text|>"))
  w.add_add_bos_token(True)


def make_tiny_llama(path):
  tokens, types, merges = byte_level_vocab()
  cfg = transformers.LlamaConfig(
      vocab_size=len(tokens), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
      rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
      tie_word_embeddings=False)
  model = transformers.LlamaForCausalLM(cfg)
  randomize(model, 1)
  sd = {k: v.numpy() for k, v in model.state_dict().items()}
  w = gguf.GGUFWriter(path, "llama")
  w.add_name("tiny llama")
  w.add_context_length(64)
  w.add_embedding_length(32)
  w.add_block_count(2)
  w.add_feed_forward_length(64)
  w.add_head_count(4)
  w.add_head_count_kv(2)
  w.add_rope_freq_base(500000.0)
  w.add_layer_norm_rms_eps(1e-5)
  w.add_rope_dimension_count(8)
  w.add_vocab_size(len(tokens))
  w.add_file_type(7)
  write_tokenizer_llama_bpe(w, tokens, types, merges)
  add(w, "token_embd.weight", sd["model.embed_tokens.weight"], Q.Q8_0)
  types_by_part = {"attn_q": Q.Q4_0, "attn_k": Q.Q4_1, "attn_v": Q.Q5_0, "attn_output": Q.F16,
                   "ffn_gate": Q.BF16, "ffn_up": Q.Q5_1, "ffn_down": Q.Q8_0}
  hf = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj"}
  for i in range(2):
    p = f"model.layers.{i}."
    add(w, f"blk.{i}.attn_norm.weight", sd[p + "input_layernorm.weight"], Q.F32)
    add(w, f"blk.{i}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"], Q.F32)
    for part, name in hf.items():
      t = sd[p + name + ".weight"]
      if part == "attn_q":
        t = llama_permute(t, 4)
      elif part == "attn_k":
        t = llama_permute(t, 2)
      add(w, f"blk.{i}.{part}.weight", t, types_by_part[part])
  add(w, "output_norm.weight", sd["model.norm.weight"], Q.F32)
  add(w, "output.weight", sd["lm_head.weight"], Q.Q4_0)
  finish(w)
  return sd


def make_tiny_gemma3(path):
  tokens, scores, types = sentencepiece_vocab()
  hd, layers = 24, 6
  cfg = transformers.Gemma3TextConfig(
      vocab_size=len(tokens), hidden_size=32, intermediate_size=32, num_hidden_layers=layers,
      num_attention_heads=2, num_key_value_heads=1, head_dim=hd, query_pre_attn_scalar=hd,
      sliding_window=3, max_position_embeddings=64, rms_norm_eps=1e-6,
      tie_word_embeddings=True)
  model = transformers.Gemma3ForCausalLM(cfg)
  randomize(model, 2)
  sd = {k: v.numpy() for k, v in model.state_dict().items()}
  w = gguf.GGUFWriter(path, "gemma3")
  w.add_name("tiny gemma3")
  w.add_context_length(64)
  w.add_embedding_length(32)
  w.add_block_count(layers)
  w.add_feed_forward_length(32)
  w.add_head_count(2)
  w.add_head_count_kv(1)
  w.add_key_length(hd)
  w.add_value_length(hd)
  w.add_rope_freq_base(1_000_000.0)
  w.add_sliding_window(3)
  w.add_layer_norm_rms_eps(1e-6)
  w.add_file_type(7)
  w.add_tokenizer_model("llama")
  w.add_tokenizer_pre("default")
  w.add_token_list(tokens)
  w.add_token_scores(scores)
  w.add_token_types(types)
  w.add_bos_token_id(2)
  w.add_eos_token_id(1)
  w.add_unk_token_id(3)
  w.add_pad_token_id(0)
  w.add_add_bos_token(True)
  w.add_add_eos_token(False)
  w.add_add_space_prefix(False)
  add(w, "token_embd.weight", sd["model.embed_tokens.weight"], Q.Q8_0)
  parts = {"attn_norm": ("input_layernorm", Q.F32), "attn_q": ("self_attn.q_proj", Q.Q4_0),
           "attn_k": ("self_attn.k_proj", Q.Q5_1), "attn_v": ("self_attn.v_proj", Q.Q8_0),
           "attn_output": ("self_attn.o_proj", Q.F16),
           "attn_q_norm": ("self_attn.q_norm", Q.F32), "attn_k_norm": ("self_attn.k_norm", Q.F32),
           "post_attention_norm": ("post_attention_layernorm", Q.F32),
           "ffn_norm": ("pre_feedforward_layernorm", Q.F32),
           "ffn_gate": ("mlp.gate_proj", Q.Q5_0), "ffn_up": ("mlp.up_proj", Q.Q4_1),
           "ffn_down": ("mlp.down_proj", Q.BF16),
           "post_ffw_norm": ("post_feedforward_layernorm", Q.F32)}
  for i in range(layers):
    for part, (name, qt) in parts.items():
      t = sd[f"model.layers.{i}.{name}.weight"]
      if part.endswith("norm"):
        t = t + np.float32(1.0)  # llama.cpp stores Gemma's gains as 1 + w
      add(w, f"blk.{i}.{part}.weight", t, qt)
  add(w, "output_norm.weight", sd["model.norm.weight"] + np.float32(1.0), Q.F32)
  finish(w)
  return sd


def finish(w):
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()


def hf_from_gguf(path, **overrides):
  d, f = os.path.split(path)
  model = transformers.AutoModelForCausalLM.from_pretrained(
      d, gguf_file=f, dtype=torch.float32, attn_implementation="eager", **overrides).eval()
  tok = transformers.AutoTokenizer.from_pretrained(d, gguf_file=f)
  return model, tok


def tiny(name, maker, overrides, tok_ref):
  tmp = tempfile.mkdtemp()
  path = os.path.join(tmp, f"{name}.gguf")
  orig = maker(path)
  model, tok = hf_from_gguf(path, **overrides)
  sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
  # the writer itself: HF's reading of our file gives back the weights we wrote (up to rounding)
  for k, v in orig.items():
    if k in sd:
      err = np.abs(sd[k] - v).max() / max(np.abs(v).max(), 1e-9)
      assert err < 0.2, (name, k, err)
  ids = tok(TEXTS[0], return_tensors="pt")["input_ids"][:, :9]  # past the tiny window of 3
  with torch.no_grad():
    logits = model(input_ids=ids).logits[0].numpy()
  if model.config.tie_word_embeddings:
    sd.pop("lm_head.weight")  # the same tensor as the embedding
  arrays = {f"weights/{k}": v for k, v in sd.items()}
  arrays["input_ids"] = ids[0].numpy().astype(np.int32)
  arrays["logits"] = logits.astype(np.float32)
  meta = {"hf_config": model.config.to_json_string(), "overrides": json.dumps(overrides),
          "torch": torch.__version__, "transformers": transformers.__version__,
          "gguf": gguf.__version__ if hasattr(gguf, "__version__") else "0.19"}
  save_file(arrays, os.path.join(HERE, f"{name}_reference.safetensors"), metadata=meta)
  shutil.copy(path, os.path.join(HERE, f"{name}.gguf"))
  tok_ref[name] = [tok(t)["input_ids"] for t in TEXTS]
  shutil.rmtree(tmp)


def rope_reference():
  """transformers' llama3 inv_freq next to the default one, for a few parameter sets: their
  ratio is what llama.cpp stores as rope_freqs.weight."""
  from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
  cases = []
  for hd, theta, factor, low, high, old in ((128, 500000.0, 32.0, 1.0, 4.0, 8192),
                                            (128, 500000.0, 8.0, 2.0, 8.0, 4096),
                                            (8, 500000.0, 32.0, 1.0, 4.0, 8192)):
    params = {"rope_type": "llama3", "rope_theta": theta, "factor": factor,
              "low_freq_factor": low, "high_freq_factor": high,
              "original_max_position_embeddings": old}
    cfg = transformers.LlamaConfig(hidden_size=4 * hd, num_attention_heads=4, head_dim=hd,
                                   rope_parameters=params)
    inv, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
    default = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd)
    cases.append({"head_dim": hd, "params": params, "inv_freq_default": default.tolist(),
                  "inv_freq_llama3": inv.tolist()})
  with open(os.path.join(HERE, "rope_reference.json"), "w") as f:
    json.dump({"cases": cases, "transformers": transformers.__version__}, f)
    f.write("\n")


# --------------------------------------------------------------------------- real models

def real(name, path, tok_ref):
  model, tok = hf_from_gguf(path)
  tok_ref[name] = [tok(t)["input_ids"] for t in TEXTS]
  layers = model.model.layers
  n = len(layers)
  blocks = [0, 8, n - 1]
  rng = np.random.default_rng(0)
  names, index, values, sums = [], [], [], []
  for k, v in model.state_dict().items():
    if k == "lm_head.weight" and model.config.tie_word_embeddings:
      continue
    a = v.detach().numpy().astype(np.float32).ravel()
    idx = np.sort(rng.choice(a.size, size=16, replace=False))
    a64 = a.astype(np.float64)
    names.append(k)
    index.append(idx.astype(np.int32))
    values.append(a[idx])
    sums.append([a64.sum(), (a64 * a64).sum()])
  arrays = {"weights/index": np.stack(index), "weights/values": np.stack(values),
            "weights/sums": np.asarray(sums, np.float64)}
  captured = {}
  hooks = [layers[b].register_forward_hook(
      lambda m, args, out, b=b: captured.__setitem__(b, (out[0] if isinstance(out, tuple)
                                                        else out).detach()))
           for b in blocks]
  greedy = []
  for p, text in enumerate(PROMPTS):
    ids = tok(text, return_tensors="pt")["input_ids"]
    T = ids.shape[1]
    positions = [0, min(5, T - 2), T - 1]
    with torch.no_grad():
      logits = model(input_ids=ids).logits[0, -1]
    top = torch.topk(logits, 20)
    arrays[f"p{p}/input_ids"] = ids[0].numpy().astype(np.int32)
    arrays[f"p{p}/positions"] = np.array(positions, np.int32)
    arrays[f"p{p}/hidden"] = np.stack(
        [captured[b][0, positions].numpy() for b in blocks]).astype(np.float32)
    arrays[f"p{p}/top_ids"] = top.indices.numpy().astype(np.int32)
    arrays[f"p{p}/top_logits"] = top.values.numpy().astype(np.float32)
    with torch.no_grad():
      out = model.generate(ids, max_new_tokens=10, do_sample=False)
    greedy.append(tok.decode(out[0, T:]))
  for h in hooks:
    h.remove()
  ids = tok(PROSE, return_tensors="pt")["input_ids"]
  with torch.no_grad():
    loss = float(model(input_ids=ids, labels=ids).loss)
  if name == "smollm2-135m":
    # The file says pre='smollm': llama.cpp isolates every digit, then applies GPT-2's split
    # (as SmolLM2's own tokenizer.json does: Digits(individual) then ByteLevel). transformers'
    # GGUF path does not know 'smollm' and uses GPT-2's split alone; record both.
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok_ref[name + "/smollm-pre"] = [tok(t)["input_ids"] for t in TEXTS]
  meta = {"weight_names": json.dumps(names), "prompts": json.dumps(PROMPTS),
          "blocks": json.dumps(blocks), "prose": PROSE,
          "prose_tokens": str(ids.shape[1]), "prose_loss": repr(loss),
          "greedy_continuations": json.dumps(greedy), "hf_config": model.config.to_json_string(),
          "torch": torch.__version__, "transformers": transformers.__version__,
          "source": os.path.basename(path)}
  save_file(arrays, os.path.join(HERE, f"{name}_hf_reference.safetensors"), metadata=meta)
  print(name, "loss", loss, "greedy", greedy)


if __name__ == "__main__":
  ap = argparse.ArgumentParser()
  ap.add_argument("--gemma", default=None, help="gemma-3-270m-q4_k_m.gguf")
  ap.add_argument("--smollm", default=None, help="SmolLM2-135M-Instruct.Q4_1.gguf")
  ap.add_argument("--skip-tiny", action="store_true")
  args = ap.parse_args()
  torch.manual_seed(0)
  os.makedirs(HERE, exist_ok=True)
  ref_path = os.path.join(HERE, "tokenizer_reference.json")
  tok_ref = {}
  if os.path.exists(ref_path):
    with open(ref_path) as f:
      tok_ref = json.load(f)["ids"]
  if not args.skip_tiny:
    rope_reference()
    tiny("tiny_llama", make_tiny_llama, {}, tok_ref)
    # transformers' GGUF config has no query_pre_attn_scalar (it would keep its 256 default);
    # llama.cpp scales by 1/sqrt(head_dim), which is what our config states.
    tiny("tiny_gemma3", make_tiny_gemma3, {"query_pre_attn_scalar": 24}, tok_ref)
  if args.gemma:
    real("gemma3-270m", args.gemma, tok_ref)
  if args.smollm:
    real("smollm2-135m", args.smollm, tok_ref)
  with open(ref_path, "w") as f:
    json.dump({"texts": TEXTS, "ids": tok_ref, "transformers": transformers.__version__}, f,
              ensure_ascii=False, indent=0)
    f.write("\n")
  for f in sorted(os.listdir(HERE)):
    print(f, os.path.getsize(os.path.join(HERE, f)))
