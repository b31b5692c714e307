"""Bad input to numpy_ref raises ValueError/TypeError naming the argument: never a silent broadcast,
a silent cast, or a wrong answer. Each case: (what, call, exception type, name that must appear)."""

import numpy as np
import pytest

import numpy_ref as R

rng = np.random.default_rng(0)
f64 = lambda *s: rng.standard_normal(s)
Q, K, V = f64(2, 3, 5, 4), f64(2, 3, 7, 4), f64(2, 3, 7, 4)
O, LSE = R.attention_forward(Q, K, V)
X2, W2 = f64(5, 4), f64(3, 4)
E = 6
XQ = f64(2, 3, E)
WI, WO = f64(3 * E, E), f64(E, E)
CFG = R.TransformerConfig(vocab_size=10, d_model=8, num_heads=2, num_encoder_layers=1, num_decoder_layers=1,
                          dim_feedforward=8, dropout=0.0)
MODEL = R.Transformer(CFG)
SRC, TGT = np.array([[1, 2, 3]]), np.array([[4, 5]])

CASES = [
    # matmul
    ("matmul 1-D a", lambda: R.matmul(f64(3), f64(3, 2)), ValueError, "a"),
    ("matmul 4-D b", lambda: R.matmul(f64(1, 2, 3), f64(1, 1, 3, 2)), ValueError, "b"),
    ("matmul rank mismatch", lambda: R.matmul(f64(2, 3), f64(1, 3, 2)), ValueError, "b"),
    ("matmul inner dims", lambda: R.matmul(f64(2, 3), f64(4, 2)), ValueError, "inner"),
    ("matmul inner dims, transposed", lambda: R.matmul(f64(2, 3), f64(2, 3), trans_b=False), ValueError, "trans_b"),
    ("matmul batch mismatch", lambda: R.matmul(f64(2, 2, 3), f64(3, 3, 2)), ValueError, "batch"),
    ("matmul no broadcast of batch 1", lambda: R.matmul(f64(1, 2, 3), f64(3, 3, 2)), ValueError, "batch"),
    ("matmul int a", lambda: R.matmul(np.ones((2, 2), int), f64(2, 2)), TypeError, "a"),
    ("matmul object b", lambda: R.matmul(f64(2, 2), np.ones((2, 2), object)), TypeError, "b"),
    ("matmul bool b", lambda: R.matmul(f64(2, 2), np.ones((2, 2), bool)), TypeError, "b"),
    ("matmul complex a", lambda: R.matmul(np.ones((2, 2), complex), f64(2, 2)), TypeError, "a"),
    ("matmul trans_a not bool", lambda: R.matmul(f64(2, 2), f64(2, 2), trans_a=1), TypeError, "trans_a"),
    # softmax
    ("softmax int", lambda: R.softmax(np.arange(4)), TypeError, "x"),
    ("softmax scalar", lambda: R.softmax(np.float64(1.0)), ValueError, "x"),
    ("softmax_backward shape", lambda: R.softmax_backward(f64(3, 4), f64(3, 5)), ValueError, "dy"),
    ("softmax_backward dtype", lambda: R.softmax_backward(f64(3).astype(np.float32), f64(3)), TypeError, "dy"),
    ("log_softmax_backward object", lambda: R.log_softmax_backward(np.ones(3, object), f64(3)), TypeError, "dy"),
    # attention
    ("attention q 3-D", lambda: R.attention_forward(f64(3, 5, 4), K, V), ValueError, "q"),
    ("attention k head dim", lambda: R.attention_forward(Q, f64(2, 3, 7, 5), V), ValueError, "k"),
    ("attention k heads", lambda: R.attention_forward(Q, f64(2, 1, 7, 4), V), ValueError, "k"),
    ("attention v length", lambda: R.attention_forward(Q, K, f64(2, 3, 6, 4)), ValueError, "v"),
    ("attention v dtype", lambda: R.attention_forward(Q, K, V.astype(np.float32)), TypeError, "v"),
    ("attention int q", lambda: R.attention_forward(np.ones((2, 3, 5, 4), int), K, V), TypeError, "q"),
    ("attention empty k", lambda: R.attention_forward(Q, f64(2, 3, 0, 4), f64(2, 3, 0, 4)), ValueError, "k"),
    ("attention negative kv_lens", lambda: R.attention_forward(Q, K, V, kv_lens=np.array([3, -1])), ValueError, "kv_lens"),
    ("attention kv_lens > Lk", lambda: R.attention_forward(Q, K, V, kv_lens=np.array([3, 8])), ValueError, "kv_lens"),
    ("attention kv_lens shape", lambda: R.attention_forward(Q, K, V, kv_lens=np.array([3, 3, 3])), ValueError, "kv_lens"),
    ("attention kv_lens 2-D", lambda: R.attention_forward(Q, K, V, kv_lens=np.array([[3, 3]])), ValueError, "kv_lens"),
    ("attention kv_lens float", lambda: R.attention_forward(Q, K, V, kv_lens=np.array([3.0, 3.0])), TypeError, "kv_lens"),
    ("attention kv_lens bool", lambda: R.attention_forward(Q, K, V, kv_lens=np.array([True, True])), TypeError, "kv_lens"),
    ("attention causal not bool", lambda: R.attention_forward(Q, K, V, causal="yes"), TypeError, "causal"),
    ("attention scale nan", lambda: R.attention_forward(Q, K, V, scale=float("nan")), ValueError, "scale"),
    ("attention scale str", lambda: R.attention_forward(Q, K, V, scale="0.5"), TypeError, "scale"),
    ("attention_backward lse shape", lambda: R.attention_backward(O, Q, K, V, O, LSE[..., :-1]), ValueError, "lse"),
    ("attention_backward do shape", lambda: R.attention_backward(O[:, :, :-1], Q, K, V, O, LSE), ValueError, "do"),
    ("attention_backward o dtype", lambda: R.attention_backward(O, Q, K, V, O.astype(np.float32), LSE), TypeError, "o"),
    ("flash block_q 0", lambda: R.flash_attention_forward(Q, K, V, block_q=0), ValueError, "block_q"),
    ("flash block_k float", lambda: R.flash_attention_backward(O, Q, K, V, O, LSE, block_k=16.0), TypeError, "block_k"),
    ("flash negative kv_lens", lambda: R.flash_attention_forward(Q, K, V, kv_lens=np.array([-2, 1])), ValueError, "kv_lens"),
    # functional ops
    ("linear in_features", lambda: R.linear_forward(f64(5, 3), W2), ValueError, "x"),
    ("linear bias shape", lambda: R.linear_forward(X2, W2, f64(4)), ValueError, "bias"),
    ("linear int weight", lambda: R.linear_forward(X2, np.ones((3, 4), int)), TypeError, "weight"),
    ("embedding id >= vocab", lambda: R.embedding_forward(np.array([0, 10]), f64(10, 3)), ValueError, "ids"),
    ("embedding negative id", lambda: R.embedding_forward(np.array([-1]), f64(10, 3)), ValueError, "ids"),
    ("embedding float ids", lambda: R.embedding_forward(np.array([1.0]), f64(10, 3)), TypeError, "ids"),
    ("embedding padding_idx", lambda: R.embedding_forward(np.array([1]), f64(10, 3), padding_idx=10), ValueError, "padding_idx"),
    ("layer norm weight shape", lambda: R.layer_norm_forward(X2, f64(5)), ValueError, "weight"),
    ("layer norm eps", lambda: R.layer_norm_forward(X2, eps=0.0), ValueError, "eps"),
    ("gelu approximate", lambda: R.gelu_forward(X2, approximate="fast"), ValueError, "approximate"),
    ("relu int", lambda: R.relu_forward(np.arange(3)), TypeError, "x"),
    ("dropout p > 1", lambda: R.dropout_forward(X2, 1.5, np.random.default_rng(0)), ValueError, "p"),
    ("dropout no rng", lambda: R.dropout_forward(X2, 0.5), TypeError, "rng"),
    ("positional length", lambda: R.sinusoidal_positional_encoding(-1, 4), ValueError, "length"),
    ("cross_entropy target >= C", lambda: R.cross_entropy_forward(f64(3, 4), np.array([0, 4, 1])), ValueError, "targets"),
    ("cross_entropy target negative", lambda: R.cross_entropy_forward(f64(3, 4), np.array([0, -5, 1])), ValueError, "targets"),
    ("cross_entropy targets shape", lambda: R.cross_entropy_forward(f64(3, 4), np.array([0, 1])), ValueError, "targets"),
    ("cross_entropy float targets", lambda: R.cross_entropy_forward(f64(3, 4), np.array([0.0, 1.0, 2.0])), TypeError, "targets"),
    ("cross_entropy smoothing", lambda: R.cross_entropy_forward(f64(3, 4), np.array([0, 1, 2]), label_smoothing=1.5), ValueError, "label_smoothing"),
    ("cross_entropy ignore_index", lambda: R.cross_entropy_forward(f64(3, 4), np.array([0, 1, 2]), ignore_index=1.0), TypeError, "ignore_index"),
    ("mha heads do not divide", lambda: R.multi_head_attention_forward(XQ, XQ, XQ, WI, None, WO, None, 4), ValueError, "num_heads"),
    ("mha in_proj shape", lambda: R.multi_head_attention_forward(XQ, XQ, XQ, WI[:-1], None, WO, None, 2), ValueError, "in_proj_weight"),
    ("mha padding mask dtype", lambda: R.multi_head_attention_forward(XQ, XQ, XQ, WI, None, WO, None, 2,
                                                                      key_padding_mask=np.zeros((2, 3), int)), TypeError, "key_padding_mask"),
    ("mha padding mask shape", lambda: R.multi_head_attention_forward(XQ, XQ, XQ, WI, None, WO, None, 2,
                                                                      key_padding_mask=np.zeros((3, 2), bool)), ValueError, "key_padding_mask"),
    ("mha key width", lambda: R.multi_head_attention_forward(XQ, f64(2, 4, E + 1), f64(2, 4, E + 1), WI, None, WO, None, 2), ValueError, "key"),
    # model config
    ("config d_model % heads", lambda: R.TransformerConfig(10, 10, 3, 1, 1), ValueError, "num_heads"),
    ("config activation", lambda: R.TransformerConfig(10, 8, 2, 1, 1, activation="tanh"), ValueError, "activation"),
    ("config positional", lambda: R.TransformerConfig(10, 8, 2, 1, 1, positional_encoding="learned"), ValueError, "positional_encoding"),
    ("config pad_id", lambda: R.TransformerConfig(10, 8, 2, 1, 1, pad_id=10), ValueError, "pad_id"),
    ("config negative layers", lambda: R.TransformerConfig(10, 8, 2, -1, 1), ValueError, "num_encoder_layers"),
    ("config zero layers", lambda: R.TransformerConfig(10, 8, 2, 1, 0), ValueError, "num_decoder_layers"),
    ("config dropout 1", lambda: R.TransformerConfig(10, 8, 2, 1, 1, dropout=1.0), ValueError, "dropout"),
    ("config float vocab", lambda: R.TransformerConfig(10.0, 8, 2, 1, 1), TypeError, "vocab_size"),
    ("model dtype", lambda: R.Transformer(CFG, dtype=np.int32), TypeError, "dtype"),
    ("model config", lambda: R.Transformer({"vocab_size": 10}), TypeError, "config"),
    # model forward/backward
    ("forward src 1-D", lambda: MODEL.forward(np.array([1, 2]), TGT), ValueError, "src"),
    ("forward src float", lambda: MODEL.forward(SRC.astype(float), TGT), TypeError, "src"),
    ("forward src out of vocab", lambda: MODEL.forward(np.array([[1, 10]]), TGT), ValueError, "src"),
    ("forward tgt negative id", lambda: MODEL.forward(SRC, np.array([[-1, 2]])), ValueError, "tgt"),
    ("forward batch mismatch", lambda: MODEL.forward(SRC, np.array([[1], [2]])), ValueError, "tgt"),
    ("forward src mask shape", lambda: MODEL.forward(SRC, TGT, np.zeros((1, 2), bool)), ValueError, "src_key_padding_mask"),
    ("forward tgt mask dtype", lambda: MODEL.forward(SRC, TGT, None, np.zeros((1, 2), int)), TypeError, "tgt_key_padding_mask"),
    ("forward causal", lambda: MODEL.forward(SRC, TGT, causal=None), TypeError, "causal"),
    ("backward dlogits shape", lambda: MODEL.backward(np.zeros((1, 2, 9)), MODEL.forward(SRC, TGT)[1]), ValueError, "dlogits"),
    ("backward dlogits dtype", lambda: MODEL.backward(np.zeros((1, 2, 10), np.float32), MODEL.forward(SRC, TGT)[1]), TypeError, "dlogits"),
    ("load_state_dict not a mapping", lambda: MODEL.load_state_dict([1, 2]), TypeError, "state_dict"),
]


@pytest.mark.parametrize("what,call,exc,name", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_by_name(what, call, exc, name):
    with pytest.raises(exc) as e:
        call()
    assert name in str(e.value), f"{what}: message {str(e.value)!r} does not name {name!r}"
