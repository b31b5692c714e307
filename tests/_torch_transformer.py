"""The PyTorch oracle for numpy_ref.Transformer (imported by the tests and the benchmark): the model
built as the seed builds it, nn.Embedding (shared) + nn.TransformerEncoder / nn.TransformerDecoder of
nn.TransformerEncoderLayer / nn.TransformerDecoderLayer (batch_first=True) + nn.Linear, plus the
sinusoidal encoding and the final norms of the full config. Its state_dict() keys are the names
numpy_ref.Transformer uses."""

import math

import numpy as np


def build_torch_model(cfg, dtype):
    import torch
    from torch import nn

    from numpy_ref import sinusoidal_positional_encoding

    class TorchSeq2Seq(nn.Module):
        def __init__(self):
            super().__init__()
            E = cfg.d_model
            self.embedding = nn.Embedding(cfg.vocab_size, E, padding_idx=cfg.pad_id)
            common = dict(d_model=E, nhead=cfg.num_heads, dim_feedforward=cfg.dim_feedforward,
                          dropout=cfg.dropout, activation=cfg.activation, batch_first=True,
                          norm_first=cfg.norm_first)
            self.encoder = nn.TransformerEncoder(
                nn.TransformerEncoderLayer(**common), cfg.num_encoder_layers,
                norm=nn.LayerNorm(E) if cfg.final_norm else None, enable_nested_tensor=False)
            self.decoder = nn.TransformerDecoder(
                nn.TransformerDecoderLayer(**common), cfg.num_decoder_layers,
                norm=nn.LayerNorm(E) if cfg.final_norm else None)
            self.linear = nn.Linear(E, cfg.vocab_size)

        def embed(self, ids):
            x = self.embedding(ids)
            if cfg.positional_encoding == "sinusoidal":
                pe = torch.from_numpy(sinusoidal_positional_encoding(ids.shape[1], cfg.d_model, np.float64)).to(x.dtype)
                x = x * math.sqrt(cfg.d_model) + pe
            return x

        def forward(self, src, tgt, spm=None, tpm=None, causal=True):
            memory = self.encoder(self.embed(src), src_key_padding_mask=spm)
            T = tgt.shape[1]
            # bool, True = hidden, like the padding masks (torch warns when the two kinds are mixed)
            mask = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1) if causal else None
            y = self.decoder(self.embed(tgt), memory, tgt_mask=mask, tgt_key_padding_mask=tpm,
                             memory_key_padding_mask=spm)
            return self.linear(y)

    return TorchSeq2Seq().to(dtype)
