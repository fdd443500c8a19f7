"""The report's opening lines: what data each model read, and the environment at its end."""

from __future__ import annotations

from typing import Any

import pandas as pd


def dataset_lines(meta: dict[str, Any]) -> str:
    datasets = list((meta.get("datasets") or {}).values()) or [meta.get("dataset", {})]
    return "\n\n".join(_dataset_line(ds) for ds in datasets)


def _dataset_line(ds: dict[str, Any]) -> str:
    line = f"Dataset: `{ds.get('name', '?')}`, n = {ds.get('n', '?')} images."
    pre = ds.get("preprocess")
    if pre:  # one decoded copy per distinct preprocessing; say which models read this one
        models = ", ".join(f"`{m}`" for m in ds.get("models") or [])
        if pre.get("transform") == "whole":  # images that fill their frame: never cropped
            how = f"resized whole, {pre['interpolation']}, no crop"
        else:
            how = f"shorter side resized to {pre['resize_size']} px, {pre['interpolation']}, centre crop"
        line += f" Decoded once at {pre['input_size']} px ({how}) for {models}."
    if ds.get("name") == "samples":
        # describe the images this run used (a `limit` keeps fewer photos or views)
        ids = [str(i) for i in ds.get("ids") or []]
        photos = list(dict.fromkeys(i.split(":")[0] for i in ids))
        views = list(dict.fromkeys(i.split(":", 1)[1] for i in ids if ":" in i))
        line += (f" These are {len(photos)} real photo(s) ({', '.join(photos)}; bundled with scikit-image and matplotlib)"
                 f" with their true ImageNet class, in {len(views)} view(s) ({', '.join(views)}; crops are centre crops)")
        line += (": views of one photo are not independent samples, so read the rates as a demonstration, not an"
                 " estimate of population accuracy." if len(ids) > len(photos) else
                 ": read the rates as a demonstration, not an estimate of population accuracy.")
    if ds.get("note"):
        line += f" **{ds['note']}**"
    if ds.get("skipped"):
        line += f" {len(ds['skipped'])} unreadable image(s) were skipped: " + ", ".join(f"`{p}`" for p, _ in ds["skipped"][:10])
    return line


def environment_line(meta: dict[str, Any]) -> str:
    env = meta.get("environment", {})
    rows = [(k, v if not isinstance(v, list) else ", ".join(map(str, v)) or "none") for k, v in env.items()]
    rows += [("suite file", meta.get("suite_file")), ("suite digest", meta.get("suite_digest", "")[:16]),
             ("wall time", f"{meta['wall_seconds']:.1f} s" if "wall_seconds" in meta else "?")]
    return pd.DataFrame(rows, columns=["", "value"]).to_markdown(index=False)
