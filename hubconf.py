"""torch.hub entry points: every zoo name returns its backbone, converted and verified, as `mimzoo.load` does.

    vit = torch.hub.load("<owner>/mimzoo", "mae_mimic3m")              # from GitHub (needs `pip install` deps)
    vit = torch.hub.load("/path/to/mimzoo", "mae_mimic3m", source="local")
    pre = torch.hub.load(..., "mae_vit_base_patch16_full", pretrainer=True)   # and any mimzoo.load keyword

Entries are made from the registry when torch.hub imports this file, so `MIMZOO_REGISTRY` entries appear too.
"""
dependencies = ["torch", "timm", "safetensors", "huggingface_hub", "yaml", "lightning"]


def _entry(name: str):
    # torch.hub.load's own second parameter is called `model`: mimzoo.load's model="pretrainer" is `pretrainer=True`
    def load(pretrained: bool = True, pretrainer: bool = False, **kwargs):
        import mimzoo

        if not pretrained:  # a zoo name is its weights; the architecture alone is `mimzoo.models.ViT(...)`
            raise mimzoo.errors.ConfigError(
                f"{name} is a set of pretrained weights; for a randomly initialised ViT build mimzoo.models.ViT "
                f"(or a method with weights=None)")
        return mimzoo.load(name, model="pretrainer" if pretrainer else "backbone", **kwargs)

    entry = __import__("mimzoo").zoo.entry(name)
    load.__name__ = load.__qualname__ = name
    load.__doc__ = (f"{name}: {entry.get('arch', 'ViT')} from the {entry.get('method', '?')} family "
                    f"(mimzoo.load({name!r}, **kwargs); licence in `mimzoo models`).")
    return load


def _entries() -> dict:
    from mimzoo import zoo

    return {name: _entry(name) for name in zoo.list_models() if name.isidentifier()}


globals().update(_entries())
