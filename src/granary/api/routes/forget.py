"""Forget requests (the right to be forgotten): their signed receipts and whether each signature holds."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Query

from granary.api.deps import Ctx
from granary.api.schemas import ForgetReceipt
from granary.secure.errors import CryptoError
from granary.secure.forget import receipts

router = APIRouter(tags=["audit"])


@router.get("/forget", response_model=list[ForgetReceipt])
def forget_receipts(ctx: Ctx, dataset: str | None = Query(None, max_length=128)) -> list[ForgetReceipt]:
    """Completed forget requests (of one dataset), oldest first; the subject appears only as an HMAC digest."""
    ctx.guard.authorize("audit", "*", obj="forget")
    out = []
    for receipt in receipts(ctx.guard, dataset):
        try:
            receipt.verify()
            ok = True
        except CryptoError:
            ok = False
        fields = {k: v for k, v in asdict(receipt).items() if k in ForgetReceipt.model_fields}
        out.append(ForgetReceipt(**fields, signature_ok=ok))
    return out
