"""The encoder-decoder Transformer in NumPy, forward and backward, parameter for parameter the PyTorch
model built from nn.Embedding + nn.TransformerEncoder(nn.TransformerEncoderLayer) +
nn.TransformerDecoder(nn.TransformerDecoderLayer) (batch_first=True) + nn.Linear.

    cfg = TransformerConfig.seed(vocab_size=64, embedding_dim=32, num_heads=4, num_layers=2)
    model = Transformer(cfg, seed=0, dtype=np.float64)
    logits, cache = model.forward(src, tgt, src_key_padding_mask, tgt_key_padding_mask, causal=True)
    grads = model.backward(dlogits, cache)        # same keys as model.state_dict()

Data flow (E = d_model; padding masks are bool, True = padding, torch's convention):

    src (N, S) -> embedding [* sqrt(E) + PE, dropout, when positional_encoding="sinusoidal"]
               -> encoder layers (self-attention with src padding)  [-> encoder.norm if final_norm]
               = memory (N, S, E)
    tgt (N, T) -> embedding [...] -> decoder layers (causal self-attention with tgt padding;
               cross-attention to memory with src padding)  [-> decoder.norm if final_norm]
               -> linear -> logits (N, T, vocab)

Each layer is torch's: post-norm x = norm(x + dropout(sublayer(x))), or with norm_first
x = x + dropout(sublayer(norm(x))); the feed-forward is linear2(dropout(activation(linear1(x)))); the
attention has its own dropout on the probabilities. LayerNorm eps is torch's 1e-5.

Initialization follows each torch module's own reset_parameters (distributions, not torch's random
stream): embedding N(0, 1) with the padding row zeroed; in_proj_weight Xavier-uniform, in_proj_bias
and out_proj.bias 0; every other nn.Linear weight and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)); norms
weight 1, bias 0. Load torch's weights with load_state_dict for bit-comparable runs.

Dropout is active while `model.training` (True after construction, as in torch; model.eval() turns it
off). Its masks come from `model.rng`, a numpy Generator seeded from `seed`; pass rng= to forward to
use another. A query whose keys are all padding attends to nothing and gets 0 (torch: NaN).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from . import _check
from .activations import gelu_backward, gelu_forward, relu_backward, relu_forward
from .dropout import check_p, dropout_backward, dropout_forward
from .embedding import check_ids, check_padding_idx, embedding_backward, embedding_forward
from .layernorm import layer_norm_backward, layer_norm_forward
from .linear import linear_backward, linear_forward
from .mha import multi_head_attention_backward, multi_head_attention_forward
from .positional import sinusoidal_positional_encoding

LAYER_NORM_EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    vocab_size: int
    d_model: int
    num_heads: int
    num_encoder_layers: int
    num_decoder_layers: int
    dim_feedforward: int = 2048
    dropout: float = 0.1
    activation: str = "relu"              # "relu" | "gelu" (erf form, torch's "gelu")
    norm_first: bool = False
    positional_encoding: str = "none"     # "none" | "sinusoidal"
    final_norm: bool = False
    pad_id: int | None = None

    def __post_init__(self):
        _check.positive_int(self.vocab_size, "vocab_size")
        _check.positive_int(self.d_model, "d_model")
        _check.positive_int(self.num_heads, "num_heads")
        if self.d_model % self.num_heads:
            raise ValueError(f"num_heads must divide d_model = {self.d_model}, got num_heads = {self.num_heads}")
        # At least one layer each: torch's nn.TransformerEncoder/Decoder cannot be built with none.
        _check.positive_int(self.num_encoder_layers, "num_encoder_layers")
        _check.positive_int(self.num_decoder_layers, "num_decoder_layers")
        _check.positive_int(self.dim_feedforward, "dim_feedforward")
        p = check_p(self.dropout, "dropout")
        if p >= 1.0:
            raise ValueError(f"dropout must be < 1 (1 would zero every activation), got {p}")
        if self.activation not in ("relu", "gelu"):
            raise ValueError(f"activation must be 'relu' or 'gelu', got {self.activation!r}")
        _check.flag(self.norm_first, "norm_first")
        if self.positional_encoding not in ("none", "sinusoidal"):
            raise ValueError(f"positional_encoding must be 'none' or 'sinusoidal', got {self.positional_encoding!r}")
        _check.flag(self.final_norm, "final_norm")
        check_padding_idx(self.pad_id, self.vocab_size, "pad_id")

    @classmethod
    def seed(cls, vocab_size, embedding_dim, num_heads, num_layers):
        """The seed's model exactly: one shared nn.Embedding, nn.TransformerEncoderLayer /
        nn.TransformerDecoderLayer with torch's defaults (dim_feedforward 2048, dropout 0.1, ReLU,
        post-norm), num_layers of each, no positional encoding, no final norms, output nn.Linear."""
        return cls(vocab_size=vocab_size, d_model=embedding_dim, num_heads=num_heads,
                   num_encoder_layers=num_layers, num_decoder_layers=num_layers)


def parameter_shapes(config: TransformerConfig) -> dict:
    """name -> shape, in the order of the torch module's state_dict()."""
    E, F, V = config.d_model, config.dim_feedforward, config.vocab_size
    shapes = {"embedding.weight": (V, E)}

    def attn(prefix):
        shapes.update({f"{prefix}.in_proj_weight": (3 * E, E), f"{prefix}.in_proj_bias": (3 * E,),
                       f"{prefix}.out_proj.weight": (E, E), f"{prefix}.out_proj.bias": (E,)})

    def ff_and_norms(prefix, n_norms):
        shapes.update({f"{prefix}.linear1.weight": (F, E), f"{prefix}.linear1.bias": (F,),
                       f"{prefix}.linear2.weight": (E, F), f"{prefix}.linear2.bias": (E,)})
        for i in range(1, n_norms + 1):
            shapes.update({f"{prefix}.norm{i}.weight": (E,), f"{prefix}.norm{i}.bias": (E,)})

    for i in range(config.num_encoder_layers):
        attn(f"encoder.layers.{i}.self_attn")
        ff_and_norms(f"encoder.layers.{i}", 2)
    if config.final_norm:
        shapes.update({"encoder.norm.weight": (E,), "encoder.norm.bias": (E,)})
    for i in range(config.num_decoder_layers):
        attn(f"decoder.layers.{i}.self_attn")
        attn(f"decoder.layers.{i}.multihead_attn")
        ff_and_norms(f"decoder.layers.{i}", 3)
    if config.final_norm:
        shapes.update({"decoder.norm.weight": (E,), "decoder.norm.bias": (E,)})
    shapes.update({"linear.weight": (V, E), "linear.bias": (V,)})
    return shapes


def _init_params(config, seed, dtype):
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in parameter_shapes(config).items():
        leaf = name.rsplit(".", 1)[-1]
        if name == "embedding.weight":
            w = rng.standard_normal(shape)
            if config.pad_id is not None:
                w[config.pad_id] = 0.0
        elif leaf == "in_proj_weight":                       # xavier_uniform over (3E, E)
            bound = math.sqrt(6.0 / (shape[0] + shape[1]))
            w = rng.uniform(-bound, bound, shape)
        elif leaf == "in_proj_bias" or name.endswith("out_proj.bias"):
            w = np.zeros(shape)
        elif ".norm" in name:                                # layer norms and the final norms
            w = np.ones(shape) if leaf == "weight" else np.zeros(shape)
        else:                                                # nn.Linear: U(+-1/sqrt(fan_in))
            fan_in = shape[1] if leaf == "weight" else _bias_fan_in(name, config)
            bound = 1.0 / math.sqrt(fan_in)
            w = rng.uniform(-bound, bound, shape)
        params[name] = w.astype(dtype)
    return params


def _bias_fan_in(bias_name, config):
    """fan_in of the nn.Linear a bias belongs to (its weight's second dimension)."""
    if bias_name.endswith("linear2.bias"):
        return config.dim_feedforward
    return config.d_model


class Transformer:
    """See the module docstring. Attributes: config, dtype, params (name -> ndarray, the live
    weights), training (bool), rng (dropout's Generator)."""

    def __init__(self, config: TransformerConfig, seed=0, dtype=np.float64):
        if not isinstance(config, TransformerConfig):
            raise TypeError(f"config must be a TransformerConfig, got {type(config).__name__}")
        seed = _check.positive_int(seed, "seed", allow_zero=True)
        dtype = np.dtype(dtype)
        if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise TypeError(f"dtype must be float32 or float64, got {dtype}")
        self.config = config
        self.dtype = dtype
        self.params = _init_params(config, seed, dtype)
        self.training = True
        self.rng = np.random.default_rng([seed, 1])        # a stream apart from the weights' stream

    # ------------------------------------------------------------------------------ state dict
    def train(self, mode=True):
        self.training = _check.flag(mode, "mode")
        return self

    def eval(self):
        return self.train(False)

    def state_dict(self) -> dict:
        """name -> a copy of the parameter, keys and shapes exactly torch's state_dict()."""
        return {k: v.copy() for k, v in self.params.items()}

    def load_state_dict(self, state_dict) -> None:
        """Copy parameters in (cast to the model's dtype). Every missing key, unexpected key, wrong
        shape and non-float value is named in one ValueError/TypeError; nothing is loaded then."""
        if not hasattr(state_dict, "items"):
            raise TypeError(f"state_dict must be a mapping of name -> array, got {type(state_dict).__name__}")
        shapes = parameter_shapes(self.config)
        missing = [k for k in shapes if k not in state_dict]
        unexpected = [k for k in state_dict if k not in shapes]
        arrays, bad_shape, bad_type = {}, [], []
        for k, v in state_dict.items():
            if k not in shapes:
                continue
            a = np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v)
            if a.dtype not in _check.FLOAT_DTYPES:
                bad_type.append(f"{k} (dtype {a.dtype})")
            elif a.shape != shapes[k]:
                bad_shape.append(f"{k} (expected {shapes[k]}, got {a.shape})")
            else:
                arrays[k] = a
        problems = []
        if missing:
            problems.append("missing keys: " + ", ".join(missing))
        if unexpected:
            problems.append("unexpected keys: " + ", ".join(unexpected))
        if bad_shape:
            problems.append("shape mismatch: " + ", ".join(bad_shape))
        if bad_type:
            problems.append("non-float values: " + ", ".join(bad_type))
        if problems:
            err = TypeError if (bad_type and not (missing or unexpected or bad_shape)) else ValueError
            raise err("state_dict does not fit this model: " + "; ".join(problems))
        for k, a in arrays.items():
            self.params[k] = a.astype(self.dtype, copy=True)

    # ------------------------------------------------------------------------------ pieces
    def _dropout(self, x, ctx):
        return dropout_forward(x, self.config.dropout, ctx["rng"], ctx["training"])

    def _embed(self, ids, ctx):
        cfg, p = self.config, self.params
        x, c_emb = embedding_forward(ids, p["embedding.weight"], cfg.pad_id)
        c_drop = None
        if cfg.positional_encoding == "sinusoidal":
            L = ids.shape[1]
            x = x * self.dtype.type(math.sqrt(cfg.d_model)) + sinusoidal_positional_encoding(L, cfg.d_model, self.dtype)
            x, c_drop = self._dropout(x, ctx)
        return x, (c_emb, c_drop)

    def _embed_backward(self, dx, cache):
        c_emb, c_drop = cache
        if self.config.positional_encoding == "sinusoidal":
            dx = dropout_backward(dx, c_drop) * self.dtype.type(math.sqrt(self.config.d_model))
        return embedding_backward(dx, c_emb)

    def _attn(self, prefix, x, kv, kpm, causal, ctx):
        p = self.params
        out, c = multi_head_attention_forward(
            x, kv, kv, p[f"{prefix}.in_proj_weight"], p[f"{prefix}.in_proj_bias"],
            p[f"{prefix}.out_proj.weight"], p[f"{prefix}.out_proj.bias"], self.config.num_heads,
            key_padding_mask=kpm, causal=causal, dropout_p=self.config.dropout, rng=ctx["rng"],
            training=ctx["training"])
        out, c_drop = self._dropout(out, ctx)
        return out, (c, c_drop)

    def _attn_backward(self, prefix, dout, cache, grads):
        c, c_drop = cache
        dq, dk, _, g = multi_head_attention_backward(dropout_backward(dout, c_drop), c)
        for k, v in g.items():
            grads[f"{prefix}.{k}"] = v
        return dq, dk                      # dk: the memory's gradient for cross-attention, else None

    def _ff(self, prefix, x, ctx):
        p = self.params
        h, c1 = linear_forward(x, p[f"{prefix}.linear1.weight"], p[f"{prefix}.linear1.bias"])
        h, ca = (relu_forward(h) if self.config.activation == "relu" else gelu_forward(h))
        h, cd = self._dropout(h, ctx)
        y, c2 = linear_forward(h, p[f"{prefix}.linear2.weight"], p[f"{prefix}.linear2.bias"])
        y, cd2 = self._dropout(y, ctx)
        return y, (c1, ca, cd, c2, cd2)

    def _ff_backward(self, prefix, dy, cache, grads):
        c1, ca, cd, c2, cd2 = cache
        dh, grads[f"{prefix}.linear2.weight"], grads[f"{prefix}.linear2.bias"] = linear_backward(dropout_backward(dy, cd2), c2)
        dh = dropout_backward(dh, cd)
        dh = relu_backward(dh, ca) if self.config.activation == "relu" else gelu_backward(dh, ca)
        dx, grads[f"{prefix}.linear1.weight"], grads[f"{prefix}.linear1.bias"] = linear_backward(dh, c1)
        return dx

    def _norm(self, prefix, x):
        return layer_norm_forward(x, self.params[f"{prefix}.weight"], self.params[f"{prefix}.bias"], LAYER_NORM_EPS)

    def _norm_backward(self, prefix, dy, cache, grads):
        dx, grads[f"{prefix}.weight"], grads[f"{prefix}.bias"] = layer_norm_backward(dy, cache)
        return dx

    def _sublayer(self, norm, block, x):
        """Residual + norm around block(h) -> (out, block_cache); post-norm or pre-norm."""
        if self.config.norm_first:
            h, cn = self._norm(norm, x)
            y, cb = block(h)
            return x + y, (cn, cb)
        y, cb = block(x)
        out, cn = self._norm(norm, x + y)
        return out, (cn, cb)

    def _sublayer_backward(self, norm, block_backward, dout, cache, grads):
        cn, cb = cache
        if self.config.norm_first:
            dh = block_backward(dout, cb)
            return dout + self._norm_backward(norm, dh, cn, grads)
        dy = self._norm_backward(norm, dout, cn, grads)
        return dy + block_backward(dy, cb)

    # ------------------------------------------------------------------------------ encode/decode
    def _context(self, training, rng):
        training = self.training if training is None else _check.flag(training, "training")
        rng = self.rng if rng is None else rng
        if training and self.config.dropout > 0 and not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        return {"training": training, "rng": rng}

    def _check_tokens(self, ids, name):
        ids = check_ids(ids, name, self.config.vocab_size, ndim=2)
        if ids.shape[1] == 0:
            raise ValueError(f"{name} must have at least one position, got shape {ids.shape}")
        return ids

    def encode(self, src, src_key_padding_mask=None, *, training=None, rng=None):
        """memory (N, S, E) and its cache; forward() = encode() + decode()."""
        src = self._check_tokens(src, "src")
        if src_key_padding_mask is not None:
            src_key_padding_mask = _check.bool_array(src_key_padding_mask, "src_key_padding_mask", src.shape)
        return self._encode(src, src_key_padding_mask, self._context(training, rng))

    def _encode(self, src, spm, ctx):
        x, c_emb = self._embed(src, ctx)
        caches = []
        for i in range(self.config.num_encoder_layers):
            pre = f"encoder.layers.{i}"
            x, c_sa = self._sublayer(f"{pre}.norm1", lambda h: self._attn(f"{pre}.self_attn", h, h, spm, False, ctx), x)
            x, c_ff = self._sublayer(f"{pre}.norm2", lambda h: self._ff(pre, h, ctx), x)
            caches.append((c_sa, c_ff))
        c_norm = None
        if self.config.final_norm:
            x, c_norm = self._norm("encoder.norm", x)
        return x, (c_emb, caches, c_norm)

    def decode(self, tgt, memory, src_key_padding_mask=None, tgt_key_padding_mask=None, causal=True,
               *, training=None, rng=None):
        """logits (N, T, vocab) from target tokens and an encoder memory (N, S, E)."""
        tgt = self._check_tokens(tgt, "tgt")
        memory = _check.float_array(memory, "memory", ndim=3)
        _check.same_dtype(memory, "memory", self.dtype, "the model")
        if memory.shape[0] != tgt.shape[0] or memory.shape[2] != self.config.d_model:
            raise ValueError(f"memory must have shape (N, S, d_model) = ({tgt.shape[0]}, S, {self.config.d_model}), got {memory.shape}")
        if src_key_padding_mask is not None:
            src_key_padding_mask = _check.bool_array(src_key_padding_mask, "src_key_padding_mask", memory.shape[:2])
        if tgt_key_padding_mask is not None:
            tgt_key_padding_mask = _check.bool_array(tgt_key_padding_mask, "tgt_key_padding_mask", tgt.shape)
        causal = _check.flag(causal, "causal")
        return self._decode(tgt, memory, src_key_padding_mask, tgt_key_padding_mask, causal, self._context(training, rng))

    def _decode(self, tgt, memory, spm, tpm, causal, ctx):
        y, c_emb = self._embed(tgt, ctx)
        caches = []
        for i in range(self.config.num_decoder_layers):
            pre = f"decoder.layers.{i}"
            y, c_sa = self._sublayer(f"{pre}.norm1", lambda h: self._attn(f"{pre}.self_attn", h, h, tpm, causal, ctx), y)
            y, c_ca = self._sublayer(f"{pre}.norm2", lambda h: self._attn(f"{pre}.multihead_attn", h, memory, spm, False, ctx), y)
            y, c_ff = self._sublayer(f"{pre}.norm3", lambda h: self._ff(pre, h, ctx), y)
            caches.append((c_sa, c_ca, c_ff))
        c_norm = None
        if self.config.final_norm:
            y, c_norm = self._norm("decoder.norm", y)
        logits, c_lin = linear_forward(y, self.params["linear.weight"], self.params["linear.bias"])
        return logits, (c_emb, caches, c_norm, c_lin, memory.shape)

    # ------------------------------------------------------------------------------ forward/backward
    def forward(self, src, tgt, src_key_padding_mask=None, tgt_key_padding_mask=None, causal=True,
                *, training=None, rng=None):
        """(logits (N, T, vocab), cache). src (N, S), tgt (N, T) int token ids; padding masks bool
        (N, S) / (N, T), True = padding; the source mask also hides padded memory from the
        decoder's cross-attention. causal hides target j > i in the decoder's self-attention."""
        src = self._check_tokens(src, "src")
        tgt = self._check_tokens(tgt, "tgt")
        if tgt.shape[0] != src.shape[0]:
            raise ValueError(f"tgt must have the batch size of src ({src.shape[0]}), got shape {tgt.shape}")
        if src_key_padding_mask is not None:
            src_key_padding_mask = _check.bool_array(src_key_padding_mask, "src_key_padding_mask", src.shape)
        if tgt_key_padding_mask is not None:
            tgt_key_padding_mask = _check.bool_array(tgt_key_padding_mask, "tgt_key_padding_mask", tgt.shape)
        causal = _check.flag(causal, "causal")
        ctx = self._context(training, rng)
        memory, c_enc = self._encode(src, src_key_padding_mask, ctx)
        logits, c_dec = self._decode(tgt, memory, src_key_padding_mask, tgt_key_padding_mask, causal, ctx)
        return logits, (c_enc, c_dec, logits.shape)

    __call__ = forward

    def backward(self, dlogits, cache) -> dict:
        """Gradients of every parameter (keys and shapes of state_dict()) given dL/dlogits."""
        c_enc, c_dec, shape = cache
        dlogits = _check.float_array(dlogits, "dlogits", ndim=3)
        _check.same_shape(dlogits, "dlogits", shape)
        _check.same_dtype(dlogits, "dlogits", self.dtype, "the model")
        grads = {}
        dmemory, d_emb_tgt = self._decode_backward(dlogits, c_dec, grads)
        d_emb_src = self._encode_backward(dmemory, c_enc, grads)
        grads["embedding.weight"] = d_emb_src + d_emb_tgt        # one embedding, shared
        return {k: grads[k] for k in self.params}                # state_dict order

    def _decode_backward(self, dlogits, cache, grads):
        c_emb, caches, c_norm, c_lin, mshape = cache
        dy, grads["linear.weight"], grads["linear.bias"] = linear_backward(dlogits, c_lin)
        if self.config.final_norm:
            dy = self._norm_backward("decoder.norm", dy, c_norm, grads)
        dmemory = np.zeros(mshape, dtype=self.dtype)
        for i in reversed(range(self.config.num_decoder_layers)):
            pre = f"decoder.layers.{i}"
            c_sa, c_ca, c_ff = caches[i]
            dy = self._sublayer_backward(f"{pre}.norm3", lambda d, c: self._ff_backward(pre, d, c, grads), dy, c_ff, grads)

            def cross_backward(d, c, pre=pre):
                dq, dmem = self._attn_backward(f"{pre}.multihead_attn", d, c, grads)
                dmemory[...] += dmem
                return dq

            dy = self._sublayer_backward(f"{pre}.norm2", cross_backward, dy, c_ca, grads)
            dy = self._sublayer_backward(f"{pre}.norm1", lambda d, c: self._attn_backward(f"{pre}.self_attn", d, c, grads)[0],
                                         dy, c_sa, grads)
        return dmemory, self._embed_backward(dy, c_emb)

    def _encode_backward(self, dmemory, cache, grads):
        c_emb, caches, c_norm = cache
        dx = dmemory
        if self.config.final_norm:
            dx = self._norm_backward("encoder.norm", dx, c_norm, grads)
        for i in reversed(range(self.config.num_encoder_layers)):
            pre = f"encoder.layers.{i}"
            c_sa, c_ff = caches[i]
            dx = self._sublayer_backward(f"{pre}.norm2", lambda d, c: self._ff_backward(pre, d, c, grads), dx, c_ff, grads)
            dx = self._sublayer_backward(f"{pre}.norm1", lambda d, c: self._attn_backward(f"{pre}.self_attn", d, c, grads)[0],
                                         dx, c_sa, grads)
        return self._embed_backward(dx, c_emb)
