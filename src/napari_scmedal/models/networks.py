"""The scMEDAL networks (METHOD.md section 3) as plain ``torch.nn`` modules.

All take ``x`` in the scaled model space (``(n, G)`` float32). RE networks also take ``z``, the
batch one-hot (``(n, B)`` float32). Heads return logits; softmax + clipping live in the loss
(:func:`napari_scmedal.nn.clipped_cross_entropy`).

* :class:`Encoder` / :class:`TiedDecoder` -- shared by AE, AEC, FE and FEC.
* :class:`AE` (``n_labels=None``) and AEC (``n_labels=K``) -- plain baselines.
* :class:`FE` (``n_labels=None``) and FEC (``n_labels=K``) -- adversarial fixed-effects models.
* :class:`RE` -- Bayesian random-effects autoencoder with its batch head.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn
from torch.nn import functional as F

from ..nn import REBlock, TiedLinear, batch_norm, dense, mlp_head

__all__ = ["Encoder", "TiedDecoder", "AE", "FE", "REEncoder", "REDecoder", "RE",
           "DEFAULT_HIDDEN", "DEFAULT_LATENT"]

DEFAULT_HIDDEN = (512, 132)
DEFAULT_LATENT = 50


class Encoder(nn.Module):
    """``[Linear -> BatchNorm -> SELU]`` per hidden layer, then ``Linear -> SELU`` to the latent.

    :meth:`forward` returns the list of every layer's output (hidden activations then the latent),
    which is what the FE adversary consumes.
    """

    def __init__(self, n_genes: int, hidden=DEFAULT_HIDDEN, latent: int = DEFAULT_LATENT):
        super().__init__()
        dims = [n_genes, *hidden]
        self.linears = nn.ModuleList(dense(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.norms = nn.ModuleList(batch_norm(b) for b in hidden)
        self.to_latent = dense(dims[-1], latent)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        h = x
        for lin, bn in zip(self.linears, self.norms):
            h = F.selu(bn(lin(h)))
            outs.append(h)
        outs.append(F.selu(self.to_latent(h)))
        return outs


class TiedDecoder(nn.Module):
    """Uses the transposes of the encoder's weight matrices with its own zero biases, no BatchNorm:
    latent -> hidden[-1] (SELU) -> ... -> hidden[0] (SELU) -> G (linear)."""

    def __init__(self, encoder: Encoder):
        super().__init__()
        sources = [*encoder.linears, encoder.to_latent][::-1]
        self.layers = nn.ModuleList(TiedLinear(s) for s in sources)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        h = latent
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i < len(self.layers) - 1:
                h = F.selu(h)
        return h


class AE(nn.Module):
    """Autoencoder with tied decoder; with ``n_labels`` it is the AEC baseline (2-unit cell-type head)."""

    kind = "ae"

    def __init__(self, n_genes: int, n_labels: int | None = None, hidden=DEFAULT_HIDDEN,
                 latent: int = DEFAULT_LATENT, class_hidden: int = 2):
        super().__init__()
        self.n_genes = n_genes
        self.encoder = Encoder(n_genes, hidden, latent)
        self.decoder = TiedDecoder(self.encoder)
        self.n_labels = n_labels
        self.class_head = mlp_head(latent, [class_hidden], n_labels) if n_labels else None

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        acts = self.encoder(x)
        out = {"acts": acts, "latent": acts[-1], "recon": self.decoder(acts[-1])}
        if self.class_head is not None:
            out["class_logits"] = self.class_head(acts[-1])
        return out


class FE(AE):
    """scMEDAL fixed-effects autoencoder: AE (or AEC with ``n_labels``, i.e. FEC) plus an adversary
    on the concatenation of every encoder output (512 + 132 + 50 = 694 -> 512 ReLU -> 132 ReLU -> B)."""

    kind = "fe"

    def __init__(self, n_genes: int, n_batches: int, n_labels: int | None = None,
                 hidden=DEFAULT_HIDDEN, latent: int = DEFAULT_LATENT, class_hidden: int = 2,
                 adversary_hidden=DEFAULT_HIDDEN):
        super().__init__(n_genes, n_labels, hidden, latent, class_hidden)
        self.n_batches = n_batches
        self.adversary = mlp_head(sum(hidden) + latent, list(adversary_hidden), n_batches)

    def adversary_logits(self, acts: list[torch.Tensor], detach: bool = False) -> torch.Tensor:
        h = torch.cat(acts, dim=1)
        return self.adversary(h.detach() if detach else h)

    def autoencoder_parameters(self):
        """Parameters updated by the autoencoder optimiser (everything but the adversary)."""
        adv = {id(p) for p in self.adversary.parameters()}
        return [p for p in self.parameters() if id(p) not in adv]


class REEncoder(nn.Module):
    """``[Linear -> RE block -> SELU]`` per hidden layer, then ``Linear -> SELU`` (no RE block on the latent)."""

    def __init__(self, n_genes: int, n_batches: int, hidden=DEFAULT_HIDDEN, latent: int = DEFAULT_LATENT,
                 prior_sd: float = 0.25, kl_estimator: str = "sample"):
        super().__init__()
        dims = [n_genes, *hidden]
        self.linears = nn.ModuleList(dense(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.re = nn.ModuleList(REBlock(b, n_batches, prior_sd, kl_estimator) for b in hidden)
        self.to_latent = dense(dims[-1], latent)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        h = x
        for lin, re in zip(self.linears, self.re):
            h = F.selu(re(lin(h), z, sample=self.training))
        return F.selu(self.to_latent(h))

    def kl(self) -> torch.Tensor:
        return torch.stack([cast(REBlock, b).kl for b in self.re]).mean()  # self.re holds REBlocks only


class REDecoder(nn.Module):
    """Untied: ``[Linear -> SELU -> RE block -> SELU]`` per hidden layer (the reference applies SELU
    twice), then ``Linear(hidden[0], G) -> RE block`` with a linear output."""

    def __init__(self, n_genes: int, n_batches: int, hidden=DEFAULT_HIDDEN, latent: int = DEFAULT_LATENT,
                 prior_sd: float = 0.25, kl_estimator: str = "sample"):
        super().__init__()
        dims = [latent, *hidden[::-1]]
        self.linears = nn.ModuleList(dense(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.re = nn.ModuleList(REBlock(b, n_batches, prior_sd, kl_estimator) for b in dims[1:])
        self.to_output = dense(dims[-1], n_genes)
        self.re_out = REBlock(n_genes, n_batches, prior_sd, kl_estimator)

    def forward(self, latent: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        h = latent
        for lin, re in zip(self.linears, self.re):
            h = F.selu(re(F.selu(lin(h)), z, sample=self.training))
        return self.re_out(self.to_output(h), z, sample=self.training)

    def kl(self) -> torch.Tensor:
        return torch.stack([b.kl for b in [*self.re, self.re_out]]).mean()


class RE(nn.Module):
    """scMEDAL random-effects autoencoder with its batch head (latent -> 5 ReLU -> B)."""

    kind = "re"

    def __init__(self, n_genes: int, n_batches: int, hidden=DEFAULT_HIDDEN, latent: int = DEFAULT_LATENT,
                 batch_hidden: int = 5, prior_sd: float = 0.25, kl_estimator: str = "sample"):
        super().__init__()
        self.n_genes = n_genes
        self.n_batches = n_batches
        self.encoder = REEncoder(n_genes, n_batches, hidden, latent, prior_sd, kl_estimator)
        self.decoder = REDecoder(n_genes, n_batches, hidden, latent, prior_sd, kl_estimator)
        self.batch_head = mlp_head(latent, [batch_hidden], n_batches)

    def forward(self, x: torch.Tensor, z: torch.Tensor, z_decode: torch.Tensor | None = None) -> dict:
        """``z_decode`` (default ``z``) is the batch one-hot given to the decoder; the
        counterfactual is the whole RE autoencoder run with both replaced (see ``counterfactual``)."""
        latent = self.encoder(x, z)
        recon = self.decoder(latent, z if z_decode is None else z_decode)
        return {"latent": latent, "recon": recon, "batch_logits": self.batch_head(latent)}

    def kl(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder.kl(), self.decoder.kl()
