"""Strict key accounting shared by every converter: each source key is renamed or dropped for a named reason."""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..errors import Error

Tensor = torch.Tensor


class ConversionError(Error, ValueError):
    """A checkpoint whose keys or shapes do not fit the format it was read as."""


@dataclass
class KeyMap:
    """Ordered regex rules. `rename`: (pattern, replacement); `drop`: (pattern, reason). First match wins."""

    rename: list[tuple[str, str]] = field(default_factory=list)
    drop: list[tuple[str, str]] = field(default_factory=list)

    def apply(self, state_dict: dict[str, Tensor], fmt: str) -> tuple[dict[str, Tensor], dict[str, str]]:
        out, dropped, unknown = {}, {}, []
        for key, value in state_dict.items():
            for pattern, reason in self.drop:
                if re.fullmatch(pattern, key):
                    dropped[key] = reason
                    break
            else:
                for pattern, repl in self.rename:
                    if re.fullmatch(pattern, key):
                        out[re.sub(pattern, repl, key)] = value
                        break
                else:
                    unknown.append(key)
        if unknown:
            raise ConversionError(
                f"{len(unknown)} key(s) of this {fmt} checkpoint are not accounted for: {_short(unknown)}. "
                f"The file may be a different variant of {fmt} or another family; "
                f"pass format=... to mimzoo.load to choose the converter, or report the key list.")
        return out, dropped


def _short(keys: list[str], n: int = 12) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f", ... (+{len(keys) - n} more)" if len(keys) > n else "")


def require(state_dict: dict[str, Tensor], keys: list[str], fmt: str) -> None:
    missing = [k for k in keys if k not in state_dict]
    if missing:
        raise ConversionError(f"not a complete {fmt} checkpoint: missing {_short(missing)}")


def block_count(state_dict: dict[str, Tensor], prefix: str) -> int:
    """Number of `prefix.<i>.` blocks, checking that the indices run 0..n-1 without a gap."""
    ids = {int(m.group(1)) for k in state_dict if (m := re.match(re.escape(prefix) + r"\.(\d+)\.", k))}
    if ids and ids != set(range(max(ids) + 1)):
        raise ConversionError(f"blocks under {prefix!r} are not numbered 0..{max(ids)}: found {sorted(ids)}")
    return len(ids)


# Head counts are not visible in the weights; the published models all use these.
ENCODER_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16, 1408: 16, 1664: 16, 2560: 32}
DECODER_HEADS = {512: 16, 768: 12}


def heads_for(width: int, table: dict[int, int], head_dim: int, what: str) -> int:
    if width in table:
        return table[width]
    if width % head_dim == 0:
        return width // head_dim
    raise ConversionError(f"cannot tell the number of attention heads of a {width}-wide {what} from its weights; "
                          f"pass num_heads=... (or decoder_num_heads=...) to mimzoo.load")


def patch_embed_config(w: Tensor) -> dict:
    """embed_dim, in_chans, patch_size from a (D, C, p, p) patch projection."""
    if w.dim() != 4 or w.shape[2] != w.shape[3]:
        raise ConversionError(f"patch_embed.proj.weight must be (D, C, p, p), got {tuple(w.shape)}")
    return {"embed_dim": w.shape[0], "in_chans": w.shape[1], "patch_size": w.shape[2]}


def grid_side(num_patches: int, what: str) -> int:
    side = int(round(num_patches ** 0.5))
    if side * side != num_patches:
        raise ConversionError(f"{what} has {num_patches} patch positions, which is not a square grid")
    return side


def mlp_ratio(state_dict: dict[str, Tensor], fc1_key: str, width: int) -> float:
    return state_dict[fc1_key].shape[0] / width


Converter = Callable[[dict[str, Tensor], dict], tuple[dict, dict[str, Tensor]]]
