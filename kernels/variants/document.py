"""`document`: packed documents attend only within themselves, ANDed with any other variant
(catalogue entry 27)."""

from __future__ import annotations

import torch

from kernels.context import TokenContext
from kernels.errors import VariantError
from kernels.kernel_form import MASK_GROUP, ContentTables, KernelSpec
from kernels.variants.base import FlexSource, Param, Variant
from kernels.variants.registry import parse_inner, register
from kernels.variants.score_mods import _parse_floats
from kernels.variants.static_masks import BOTH, special_pair


def document(q_idx, kv_idx, doc):
    """doc(i) = doc(j): query and key are in the same document (doc: a document id per token)."""
    return doc[q_idx] == doc[kv_idx]


def documents_by_lengths(n: int, lengths: tuple[int, ...], device=None) -> torch.Tensor:
    """long (n,): document of each position for documents of the given lengths in order; the tokens
    after the last one form one more document."""
    ends = torch.tensor(lengths, device=device).cumsum(0)
    return torch.bucketize(torch.arange(n, device=device), ends, right=True)


def documents_by_separator(token_ids: torch.Tensor, separators: tuple[int, ...]) -> torch.Tensor:
    """long (n,): document of each position, a separator (EOS, SEP) ending the document it is in."""
    is_sep = torch.isin(token_ids, torch.tensor(separators, device=token_ids.device)).long()
    return is_sep.cumsum(0) - is_sep


@register
class Document(Variant):
    """Packed-document masking: keep j only when i and j are in the same document, AND `inner`.

    As attention-gym's `generate_doc_mask_mod` (documents packed into one sequence, e.g. for
    training without padding). Documents end at a separator token (`sep`: a token id, or auto: the
    tokenizer's EOS or SEP, ending the document it is in) or have the given `lengths` (e.g. 12;40;7,
    the rest one more document). `inner` is any variant (in [brackets] when it has parameters), run
    within each document. On a ViT (no token ids) give lengths; special tokens stay global.
    """

    name = "document"
    family = "static_mask"
    applies_to = BOTH
    params = (
        Param("sep", int, None, "token id that ends a document", low=0, auto="the tokenizer's EOS or SEP"),
        Param("lengths", str, "", "document lengths in tokens, e.g. 12;40;7 (instead of a separator)"),
        Param("inner", str, "full", "the variant run within each document, in [brackets] when it has parameters"),
    )

    def __init__(self, **values):
        super().__init__(**values)
        self.inner, self.values["inner"] = parse_inner(self.name, self.values["inner"])
        lengths = _parse_floats(self.name, "lengths", self.values["lengths"], positive=True)
        if any(x != int(x) for x in lengths):
            raise VariantError(f"document: lengths={self.values['lengths']!r} must be whole numbers of tokens")
        self.lengths = tuple(int(x) for x in lengths)
        inner = self.inner
        self.row_mask, self.row_probs, self.attend = inner.row_mask, inner.row_probs, inner.attend
        self.needs_calibration = getattr(inner, "needs_calibration", False)
        self.mask_depends_on_layer = getattr(inner, "mask_depends_on_layer", False)
        self.honours_native, self.widens_mask = inner.honours_native, inner.widens_mask
        self._docs: tuple = (None, None)  # (context tensors it came from, doc ids)

    def check(self, ctx: TokenContext) -> None:
        super().check(ctx)
        self.inner.check(ctx)
        self.doc_ids(ctx)

    def check_kind(self, kind: str) -> None:
        super().check_kind(kind)
        self.inner.check_kind(kind)

    def doc_ids(self, ctx: TokenContext) -> torch.Tensor:
        """long (N,): the document of each token of this context."""
        held, docs = self._docs
        if held is not None and held[0] is ctx.special and held[1] is ctx.token_ids:
            return docs
        device = ctx.special.device
        if self.lengths:
            docs = documents_by_lengths(ctx.n, self.lengths, device)
        else:
            separators = (self.sep,) if self.sep is not None else tuple(ctx.separators)
            if ctx.token_ids is None or not separators:
                raise VariantError("document: this input has no token ids or separator to split at; "
                                   "give the documents' lengths, e.g. document:lengths=12;40;7")
            if len(ctx.token_ids) != ctx.n:
                raise VariantError(f"document: {len(ctx.token_ids)} token ids for {ctx.n} tokens")
            docs = documents_by_separator(ctx.token_ids.to(device), separators)
        self._docs = ((ctx.special, ctx.token_ids), docs)
        return docs

    def mask_mod(self, ctx: TokenContext):
        docs, inner, is_special = self.doc_ids(ctx), self.inner.mask_mod(ctx), special_pair(ctx)

        def keep(b, h, q_idx, kv_idx):
            same = document(q_idx, kv_idx, docs)
            if is_special is not None:
                same = same | is_special(q_idx, kv_idx)
            return same if inner is None else same & inner(b, h, q_idx, kv_idx)

        return keep

    def score_mod(self, ctx):
        return self.inner.score_mod(ctx)

    def head_weight(self, ctx, heads):
        return self.inner.head_weight(ctx, heads)

    def prefix_length(self, ctx):
        return self.inner.prefix_length(ctx)

    def calibrate(self, *args):
        return self.inner.calibrate(*args)

    def kernel_form(self, ctx: TokenContext) -> KernelSpec | None:
        """Documents as groups with an identity table (specials stay global in the kernels too); inner=full only."""
        if not self.inner.is_full:
            return None
        docs = self.doc_ids(ctx)
        table = torch.eye(int(docs.max()) + 1, dtype=torch.bool, device=docs.device)[None, None]
        return KernelSpec(mask=MASK_GROUP, content=lambda q, k: ContentTables(
            group=(table.to(q.device), docs.to(q.device), docs.to(q.device))) if k.shape[2] == len(docs) else None)

    def auto_value(self, name, ctx):
        return None  # sep=auto: the context's separators

    def flex_source(self, ctx_kind: str) -> FlexSource | None:
        inner = self.inner.flex_source(ctx_kind) if type(self.inner).flex_source is not Variant.flex_source \
            else (FlexSource(functions=()) if self.inner.is_full else None)
        if inner is None:
            return None
        if self.lengths:
            setup = (f"LENGTHS = {list(self.lengths)}  # the packed documents' lengths; the rest is one more\n"
                     "DOC = torch.bucketize(torch.arange(N, device=DEVICE), torch.tensor(LENGTHS, device=DEVICE)"
                     ".cumsum(0), right=True)\n")
        else:
            sep = "EOS_ID" if self.sep is None else str(self.sep)
            setup = ("TOKEN_IDS = torch.zeros(N, dtype=torch.long, device=DEVICE)  # the packed input's token ids\n"
                     + ("EOS_ID = 2  # your tokenizer's end-of-document id (EOS or SEP)\n" if self.sep is None else "")
                     + f"_is_sep = (TOKEN_IDS == {sep}).long()\n"
                     "DOC = _is_sep.cumsum(0) - _is_sep  # a separator ends the document it is in\n")
        mask = "document(q_idx, kv_idx, DOC)" + (f" & ({inner.mask})" if inner.mask else "")
        return FlexSource(functions=(document, *inner.functions), mask=mask, bias=inner.bias, score=inner.score,
                          widens=inner.widens, setup=inner.setup + setup)
