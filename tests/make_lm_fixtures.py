"""Regenerates tests/fixtures/lm/: tiny random-weight GPT-2, GPT-NeoX and BERT checkpoints
with reference activations from HF transformers' PyTorch code, and MiniLM reference
sentence embeddings.

Needs torch (not a jaxcode dependency); run it from a separate virtualenv:
  python3 -m venv /work/torchvenv
  /work/torchvenv/bin/pip install torch==2.13.0 transformers==5.24.0 safetensors numpy tokenizers
  /work/torchvenv/bin/python tests/make_lm_fixtures.py [--minilm DIR]

Reference hookpoints come from forward hooks on the HF modules (names as in
jaxcode.models.lm): block input/output (resid_pre/resid_post), the attention output
projection, the pre-MLP norm's input and output (resid_mid/mlp_in; BERT: the attention
LayerNorm output and the intermediate dense input; GPT-NeoX's parallel residual:
resid_pre + attn_out), the MLP activation module and MLP output projection, the final norm,
logits. The random weights depend only on the seeds, so regenerating keeps every earlier
reference value.
"""

import argparse
import json
import os

import numpy as np
import torch
import transformers
from safetensors.numpy import save_file
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "lm")
WORDS = ("the a an of to in and is was it that on for with as by at from this be are or not "
         "model layer token residual stream attention head neuron feature sparse python code "
         "def return class import data value function small tiny random weight test").split()
TEXTS = ["the model is a tiny random test of attention and residual stream",
         "sparse feature in a small layer"]
MINILM_TEXTS = ["The weather is lovely today.", "It's so sunny outside!",
                "He drove to the stadium.", "A man is eating food.",
                "A man is eating a piece of bread.", "The stock market fell sharply today."]


def make_tokenizer(specials, lowercase=False, template=None):
  vocab = {w: i for i, w in enumerate(list(specials) + WORDS)}
  tok = Tokenizer(models.WordLevel(vocab, unk_token=specials[1]))
  if lowercase:
    tok.normalizer = normalizers.Lowercase()
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  if template:
    cls, sep = template
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])])
  return tok, len(vocab)


def randomize(model, seed, norm_center=1.0):
  """Every parameter drawn from the seed: norm gains norm_center + 0.1 N(0, 1) (Gemma's
  gains are 1 + w, so its center is 0), everything else 0.15 N(0, 1)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if p.ndim == 1 and ("norm" in name.lower() or "ln_" in name) and name.endswith("weight"):
        p.copy_(norm_center + 0.1 * torch.randn(p.shape, generator=g))
      else:
        p.copy_(0.15 * torch.randn(p.shape, generator=g))


def capture(model, blocks, parts, final_mod, inputs=None):
  """Registers hooks; returns the dict they fill. parts: hookpoint kind -> the block's
  submodule whose output it is; inputs: kind -> the submodule whose first input it is."""
  out = {}

  def first(x):
    return x[0] if isinstance(x, (tuple, list)) else x

  for i, blk in enumerate(blocks):
    def pre(mod, args, kwargs, i=i):
      out[f"blocks.{i}.resid_pre"] = (args[0] if args else kwargs["hidden_states"]).detach()
    def post(mod, args, output, i=i):
      out[f"blocks.{i}.resid_post"] = first(output).detach()
    blk.register_forward_pre_hook(pre, with_kwargs=True)
    blk.register_forward_hook(post)
    for kind, getter in parts.items():
      def h(mod, args, output, i=i, kind=kind):
        out[f"blocks.{i}.{kind}"] = first(output).detach()
      getter(blk).register_forward_hook(h)
    for kind, getter in (inputs or {}).items():
      def h_in(mod, args, kwargs, i=i, kind=kind):
        out[f"blocks.{i}.{kind}"] = (args[0] if args else kwargs["hidden_states"]).detach()
      getter(blk).register_forward_pre_hook(h_in, with_kwargs=True)
  if final_mod is not None:
    final_mod.register_forward_hook(lambda m, a, o: out.__setitem__("final", first(o).detach()))
  return out


def save_reference(out_dir, rec, ids, mask, texts):
  """out_dir/reference.safetensors: every recorded tensor as float32, the inputs, and the
  texts and library versions as metadata."""
  arrays = {k: v.float().numpy().astype(np.float32) for k, v in rec.items()}
  arrays["input_ids"] = ids.numpy().astype(np.int32)
  arrays["attention_mask"] = mask.numpy().astype(np.int32)
  save_file(arrays, os.path.join(out_dir, "reference.safetensors"),
            metadata={"texts": json.dumps(texts), "torch": torch.__version__,
                      "transformers": transformers.__version__})


def build(kind):
  if kind == "gpt2":
    tok, V = make_tokenizer(["<|endoftext|>", "<unk>", "<pad>"])
    cfg = transformers.GPT2Config(vocab_size=V, n_positions=16, n_embd=32, n_layer=2, n_head=4,
                                  n_inner=64, activation_function="gelu_new",
                                  bos_token_id=0, eos_token_id=0, pad_token_id=2)
    model = transformers.GPT2LMHeadModel(cfg)
    blocks, body = model.transformer.h, model.transformer
    parts = {"attn_out": lambda b: b.attn.c_proj, "mlp_hidden": lambda b: b.mlp.act,
             "mlp_out": lambda b: b.mlp.c_proj, "mlp_in": lambda b: b.ln_2}
    inputs = {"resid_mid": lambda b: b.ln_2}
    final_mod = body.ln_f
    specials = dict(eos_token="<|endoftext|>", unk_token="<unk>", pad_token="<pad>")
  elif kind in ("gpt_neox", "gpt_neox_seq"):
    # Pythia layout (parallel residual, rotary on 1/4 of each head); the _seq variant has
    # a sequential residual, rotary on half the head and a relu MLP.
    seq = kind == "gpt_neox_seq"
    tok, V = make_tokenizer(["<|endoftext|>", "<unk>", "<pad>"])
    cfg = transformers.GPTNeoXConfig(
        vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=16, hidden_act="relu" if seq else "gelu",
        rope_parameters={"rope_type": "default", "rope_theta": 500.0 if seq else 10000.0,
                         "partial_rotary_factor": 0.5 if seq else 0.25},
        use_parallel_residual=not seq, tie_word_embeddings=False,
        bos_token_id=0, eos_token_id=0, pad_token_id=2)
    model = transformers.GPTNeoXForCausalLM(cfg)
    blocks, body = model.gpt_neox.layers, model.gpt_neox
    parts = {"attn_out": lambda b: b.attention.dense, "mlp_hidden": lambda b: b.mlp.act,
             "mlp_out": lambda b: b.mlp.dense_4h_to_h,
             "mlp_in": lambda b: b.post_attention_layernorm}
    # sequential: the pre-MLP norm reads resid_mid; parallel: make() adds resid_pre + attn_out
    inputs = {"resid_mid": lambda b: b.post_attention_layernorm} if seq else {}
    final_mod = body.final_layer_norm
    specials = dict(eos_token="<|endoftext|>", unk_token="<unk>", pad_token="<pad>")
  elif kind == "bert":
    tok, V = make_tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], lowercase=True,
                            template=("[CLS]", "[SEP]"))
    cfg = transformers.BertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=64,
                                  max_position_embeddings=16, type_vocab_size=2,
                                  hidden_act="gelu", pad_token_id=0)
    model = transformers.BertForMaskedLM(cfg)
    blocks, body = model.bert.encoder.layer, model.bert
    parts = {"attn_out": lambda b: b.attention.output.dense,
             "mlp_hidden": lambda b: b.intermediate,
             "mlp_out": lambda b: b.output.dense,
             "resid_mid": lambda b: b.attention.output.LayerNorm}
    inputs = {"mlp_in": lambda b: b.intermediate.dense}
    final_mod = None
    specials = dict(unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
                    mask_token="[MASK]")
  cfg._attn_implementation = "eager"
  return tok, model, blocks, (parts, inputs), final_mod, specials


def make(kind, seed):
  out_dir = os.path.join(HERE, kind)
  os.makedirs(out_dir, exist_ok=True)
  tok, model, blocks, parts, final_mod, specials = build(kind)
  randomize(model, seed)
  model.eval()
  model.save_pretrained(out_dir)
  fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, **specials)
  fast.save_pretrained(out_dir)
  enc = fast(TEXTS, padding=True, return_tensors="pt")
  ids, mask = enc["input_ids"], enc["attention_mask"]
  rec = capture(model, blocks, parts[0], final_mod, parts[1])
  with torch.no_grad():
    res = model(input_ids=ids, attention_mask=mask)
  for i in range(len(blocks)):
    rec.setdefault(f"blocks.{i}.resid_mid",
                   rec[f"blocks.{i}.resid_pre"] + rec[f"blocks.{i}.attn_out"])
  rec["embed"] = rec["blocks.0.resid_pre"]
  if final_mod is None:
    rec["final"] = rec[f"blocks.{len(blocks) - 1}.resid_post"]
  rec["logits"] = res.logits
  save_reference(out_dir, rec, ids, mask, TEXTS)
  for f in sorted(os.listdir(out_dir)):
    print(kind, f, os.path.getsize(os.path.join(out_dir, f)))


def make_minilm(path):
  tok = transformers.AutoTokenizer.from_pretrained(path)
  model = transformers.BertModel.from_pretrained(path, attn_implementation="eager").eval()
  enc = tok(MINILM_TEXTS, padding=True, return_tensors="pt")
  with torch.no_grad():
    h = model(**enc).last_hidden_state
  m = enc["attention_mask"][..., None].float()
  emb = (h * m).sum(1) / m.sum(1)
  emb = torch.nn.functional.normalize(emb, dim=-1)
  save_file({"input_ids": enc["input_ids"].numpy().astype(np.int32),
             "attention_mask": enc["attention_mask"].numpy().astype(np.int32),
             "embeddings": emb.numpy().astype(np.float32)},
            os.path.join(HERE, "minilm_reference.safetensors"),
            metadata={"texts": json.dumps(MINILM_TEXTS), "torch": torch.__version__,
                      "transformers": transformers.__version__})
  print(np.round((emb @ emb.T).numpy(), 4))


if __name__ == "__main__":
  ap = argparse.ArgumentParser()
  ap.add_argument("--minilm", default=None, help="dir of all-MiniLM-L6-v2 (model.safetensors)")
  a = ap.parse_args()
  torch.manual_seed(0)
  for s, kind in enumerate(("gpt2", "gpt_neox", "bert", "gpt_neox_seq")):
    make(kind, seed=s + 1)
  if a.minilm:
    make_minilm(a.minilm)
