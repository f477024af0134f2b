"""Model cards (README.md, huggingface_hub's `ModelCard`) that travel with every folder mimzoo writes.

A card says where the weights came from and under which terms: the licence (most MIM weights are non-commercial,
and the card says so in words as well as in the metadata), the upstream repo and paper, the base model, and the
metrics the zoo records for that file, each with its protocol and source (reported upstream, never measured here).
The facts come from the zoo entry the weights were loaded from (`config["zoo"]`, or a method's `weights=`), else
from the Hub repo they came from; a card never invents a licence: unknown is written as unknown.
"""
from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from . import zoo
from .checkpoint import atomic_path

CARD_FILE = "README.md"


def zoo_name(config: dict) -> str | None:
    """The zoo entry a config's weights came from: recorded by `mimzoo.load` / `convert`, a method's `weights=`,
    or a card's provenance carried through an earlier save."""
    names = [config.get("zoo"), (config.get("provenance") or {}).get("zoo"),
             (config.get("hyper_parameters") or {}).get("weights")]
    return next((n for n in names if isinstance(n, str) and n in zoo.registry()), None)


def provenance(config: dict, source: str | os.PathLike | None = None) -> dict:
    """{zoo, license, paper, repo, base_model, metrics, ...} of the weights a config describes; kept in the
    config.json of every folder mimzoo writes, so a later save still knows them."""
    facts = dict(config.get("provenance") or {})
    name = zoo_name(config)
    if name:
        e = zoo.entry(name)
        family = zoo.families().get(e.get("method"), {})
        paper = e.get("paper") or family.get("paper") or {}
        facts.update({k: v for k, v in {
            "zoo": name, "license": e.get("license") or family.get("license"), "repo": family.get("repo"),
            "paper": paper.get("title"), "arxiv": paper.get("arxiv"), "pretrain_data": e.get("pretrain_data"),
            "upstream_file": _where(e.get("source") or {}), "metrics": e.get("metrics") or []}.items() if v})
    weights = (config.get("hyper_parameters") or {}).get("weights")
    origin = str(source) if source is not None else (weights if isinstance(weights, str) else None)
    if origin and origin.startswith("hf-hub:"):
        facts.setdefault("base_model", origin[len("hf-hub:"):].partition("@")[0])
    if config.get("source_format") or config.get("format") not in (None, "mimzoo"):
        facts.setdefault("format", config.get("source_format") or config.get("format"))
    method = (zoo.entry(name).get("method") if name else None) or config.get("method")
    if method:  # the family that trained the weights (what `mimzoo bench` colours a point by)
        facts.setdefault("method", method)
    return facts


def _where(source: dict) -> str | None:
    if "hf" in source:
        return f"https://huggingface.co/{source['hf']['repo']} ({source['hf']['filename']})"
    if "url" in source:
        return source["url"]
    if "gdrive" in source:
        return f"https://drive.google.com/file/d/{source['gdrive']['id']}"
    return None


def model_card(facts: dict, *, what: str, library: str = "mimzoo", usage: str | None = None) -> ModelCard:
    """The card for weights with these `provenance` facts; `what` is one line on what the folder holds."""
    licence = facts.get("license")
    hf_licence = licence.lower() if licence and licence.lower().startswith(("cc-", "apache", "mit", "bsd")) else None
    data = ModelCardData(license=hf_licence or ("other" if licence else None), library_name=library,
                         tags=["mimzoo", "masked-image-modeling", "vision-transformer"],
                         base_model=facts.get("base_model"))
    lines = [f"# {facts.get('zoo') or 'mimzoo weights'}", "", what, ""]
    if licence and "nc" in licence.lower().split("-"):
        lines += [f"**Licence: {licence}. Non-commercial use only**: these weights were released upstream under "
                  f"a non-commercial licence, and copies and derivatives (fine-tuned or converted weights) carry "
                  f"its terms.", ""]
    elif licence:
        lines += [f"**Licence: {licence}** (as released upstream).", ""]
    else:
        lines += ["**Licence: unknown**: mimzoo does not know where these weights came from; check their "
                  "origin before use.", ""]
    source = [f"- {k}: {facts[k]}" for k in ("repo", "upstream_file", "base_model", "format", "pretrain_data")
              if facts.get(k)]
    if facts.get("paper"):
        arxiv = f" (arXiv:{facts['arxiv']}, https://arxiv.org/abs/{facts['arxiv']})" if facts.get("arxiv") else ""
        source.insert(0, f"- paper: {facts['paper']}{arxiv}")
    if source:
        lines += ["## Source", "", *source, ""]
    if facts.get("metrics"):
        lines += ["## Reported results", "", "As reported upstream (not measured by mimzoo); compare only rows "
                  "with the same protocol.", "", "| task | metric | value | protocol | source |",
                  "|---|---|---|---|---|"]
        lines += [f"| {m.get('task')} | {m.get('metric')} | {m.get('value')} | {m.get('protocol')} | "
                  f"{m.get('source')} |" for m in facts["metrics"]]
        lines.append("")
    if usage:
        lines += ["## Use", "", "```python", usage, "```", ""]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


def write_card(folder: str | os.PathLike, card: ModelCard) -> Path:
    """README.md in `folder`, written atomically."""
    path = Path(folder) / CARD_FILE
    with atomic_path(path) as tmp:
        tmp.write_text(str(card))
    return path


def write_folder_card(folder: str | os.PathLike, config: dict, *, what: str, library: str = "mimzoo",
                      usage: str | None = None, source=None) -> Path:
    facts = provenance(config, source)
    return write_card(folder, model_card(facts, what=what, library=library,
                                         usage=usage or f"import mimzoo\n\nvit = mimzoo.load({str(folder)!r})"))
