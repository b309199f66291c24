"""Regenerates the decoder fixtures of tests/fixtures/lm/: tiny random-weight Llama (GQA,
untied, llama3 rope scaling), SmolLM-like Llama (tied, three query heads per KV head),
Qwen2 (q/k/v biases, tied), Qwen3 (q/k norms, head_dim != D/H), Gemma 2 (soft-caps,
alternating sliding window shorter than the sequence, query_pre_attn_scalar != head_dim)
and Gemma 3 text (q/k norms, sliding and global layers with their own rotary settings,
one KV head) checkpoints, with reference activations from HF transformers' PyTorch code.

Needs torch (not a jaxcode dependency); run it from the side virtualenv that
tests/make_lm_fixtures.py describes, with the pinned versions:
  /work/torchvenv/bin/python tests/make_decoder_fixtures.py      # torch 2.13, transformers 5.24.0

float32, eager attention. Reference hookpoints come from forward hooks on the HF modules:
block input/output (resid_pre/resid_post); attn_out = o_proj output (Gemma: the
post_attention_layernorm output); resid_mid / mlp_in = input / output of the pre-MLP norm
(Llama/Qwen: post_attention_layernorm; Gemma: pre_feedforward_layernorm); mlp_hidden =
down_proj input; mlp_out = down_proj output (Gemma: post_feedforward_layernorm output);
final = model.norm output; logits. The batch has one right-padded row; both rows are
longer than the sliding windows and the padding run is shorter, so no query row is
entirely masked. The reference ids are what transformers' AutoTokenizer gives for the saved
directory: a WordLevel tokenizer as in make_lm_fixtures.py, except for qwen2, which
AutoTokenizer always loads as the byte-level BPE Qwen2Tokenizer, so that fixture gets a
byte-level BPE over single letters.
"""

import json
import os

import string

import numpy as np
import torch
import transformers
from safetensors.numpy import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from make_lm_fixtures import HERE, capture, make_tokenizer, randomize, save_reference

TEXTS = ["the model is a tiny random test of attention and residual stream data",
         "sparse feature in a small layer of the model is not"]
VERSIONS = {"torch": "2.13", "transformers": "5.24.0"}
LETTER_TEXTS = ["q w e n t w o i s a b p e", "s m a l l b y t e b p e"]
SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]
COMMON = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
              pad_token_id=0, bos_token_id=2, eos_token_id=3)
SLIDE, FULL = "sliding_attention", "full_attention"


def configs() -> dict:
  """name -> (config class, model class, config kwargs)."""
  c = COMMON
  return {
      "llama": ("LlamaConfig", "LlamaForCausalLM", dict(
          c, rms_norm_eps=1e-5, tie_word_embeddings=False, max_position_embeddings=131072,
          rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                           "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                           "original_max_position_embeddings": 8192})),
      "smollm": ("LlamaConfig", "LlamaForCausalLM", dict(
          c, hidden_size=36, num_attention_heads=6, num_key_value_heads=2, rms_norm_eps=1e-5,
          tie_word_embeddings=True,
          rope_parameters={"rope_type": "default", "rope_theta": 100000.0})),
      "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(
          c, tie_word_embeddings=True,
          rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})),
      "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(
          c, head_dim=16, tie_word_embeddings=True,
          rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})),
      "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(
          c, head_dim=16, query_pre_attn_scalar=24, sliding_window=4,
          attn_logit_softcapping=2.0, final_logit_softcapping=3.0,
          hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True,
          rope_parameters={"rope_type": "default", "rope_theta": 10000.0})),
      "gemma3_text": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(
          c, num_hidden_layers=3, num_key_value_heads=1, head_dim=8,
          query_pre_attn_scalar=20, sliding_window=5, layer_types=[SLIDE, FULL, SLIDE],
          hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True,
          rope_parameters={SLIDE: {"rope_type": "default", "rope_theta": 10000.0},
                           FULL: {"rope_type": "linear", "factor": 8.0,
                                  "rope_theta": 1000000.0}})),
  }


def hooked_modules(gemma: bool):
  """(outputs, inputs): hookpoint kind -> the decoder layer's submodule it reads."""
  if gemma:
    outs = {"attn_out": lambda b: b.post_attention_layernorm,
            "mlp_in": lambda b: b.pre_feedforward_layernorm,
            "mlp_out": lambda b: b.post_feedforward_layernorm}
    ins = {"resid_mid": lambda b: b.pre_feedforward_layernorm}
  else:
    outs = {"attn_out": lambda b: b.self_attn.o_proj,
            "mlp_in": lambda b: b.post_attention_layernorm,
            "mlp_out": lambda b: b.mlp.down_proj}
    ins = {"resid_mid": lambda b: b.post_attention_layernorm}
  ins["mlp_hidden"] = lambda b: b.mlp.down_proj
  return outs, ins


def letter_bpe():
  """Byte-level BPE whose words are single letters: 'x' and 'Gx' (G = the byte-level space)."""
  space = "\u0120"
  letters = list(string.ascii_lowercase)
  tokens = SPECIALS + [space] + letters + [space + c for c in letters]
  vocab = {t: i for i, t in enumerate(tokens)}
  tok = Tokenizer(models.BPE(vocab, [(space, c) for c in letters]))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  return tok, len(vocab)


def save_tokenizer(name, out_dir, vocab_size):
  """Saves the fixture's tokenizer; returns the texts and the ids/mask AutoTokenizer gives."""
  tok, n = letter_bpe() if name == "qwen2" else make_tokenizer(SPECIALS)
  assert n <= vocab_size
  fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>",
                                              unk_token="<unk>", bos_token="<s>",
                                              eos_token="</s>")
  fast.save_pretrained(out_dir)
  texts = LETTER_TEXTS if name == "qwen2" else TEXTS
  enc = transformers.AutoTokenizer.from_pretrained(out_dir)(texts, padding=True,
                                                            return_tensors="pt")
  assert (enc["input_ids"] != fast.unk_token_id).all()
  return texts, enc["input_ids"], enc["attention_mask"]


def make(name, seed):
  cfg_cls, model_cls, kw = configs()[name]
  cfg = getattr(transformers, cfg_cls)(**kw)
  cfg._attn_implementation = "eager"
  model = getattr(transformers, model_cls)(cfg)
  gemma = name.startswith("gemma")
  randomize(model, seed, norm_center=0.0 if gemma else 1.0)
  model.eval()
  out_dir = os.path.join(HERE, name)
  os.makedirs(out_dir, exist_ok=True)
  model.save_pretrained(out_dir)
  texts, ids, mask = save_tokenizer(name, out_dir, cfg.vocab_size)
  outs, ins = hooked_modules(gemma)
  rec = capture(model, model.model.layers, outs, model.model.norm, ins)
  with torch.no_grad():
    res = model(input_ids=ids, attention_mask=mask,
                position_ids=torch.arange(ids.shape[1])[None].expand_as(ids))
  rec["embed"] = rec["blocks.0.resid_pre"]
  rec["logits"] = res.logits
  save_reference(out_dir, rec, ids, mask, texts)
  total = sum(os.path.getsize(os.path.join(out_dir, f)) for f in os.listdir(out_dir))
  print(name, "tokens", tuple(ids.shape), "pads", int((mask == 0).sum()), "bytes", total)


def main():
  for pkg, want in VERSIONS.items():
    have = __import__(pkg).__version__
    if not have.startswith(want):
      raise SystemExit(f"{pkg} {have}: the fixtures are pinned to {want}")
  torch.manual_seed(0)
  for s, name in enumerate(configs()):
    make(name, seed=101 + s)


if __name__ == "__main__":
  main()
