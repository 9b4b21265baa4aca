"""``export``: a run's synthetic set as files other tools read (imports: :mod:`.cmd_import`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from distillkit.cli.options import Debug

if TYPE_CHECKING:
    from torch import Tensor

from distillkit.cli.app import app, cli_errors, out

EXPORT_FORMATS = ("mtt", "png", "imagefolder")
#: The split folder of ``--format imagefolder`` (Hugging Face reads it as the split's name).
IMAGEFOLDER_SPLIT = "train"
MTT_FILES = ("images_best.pt", "labels_best.pt", "lr_best.pt")
_PNG_NAME = re.compile(r"^(\d+)\.png$")


@app.command("export")
def export_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A run directory holding synthetic.safetensors.")],
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            "-f",
            help="mtt: images_best.pt, labels_best.pt, lr_best.pt (the normalised images the networks "
            "see, as MTT/AST/DATM evaluators read them; labels_best.pt holds a soft-labelled set's "
            "logits [N, classes], as DATM saves them); png: OUT/<class>/<i>.png in pixel space; "
            "imagefolder: OUT/train/<class>/<i>.png, for torchvision's ImageFolder and Hugging Face's "
            "imagefolder.",
        ),
    ],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder to write (new or empty).")],
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite", help="Write into a non-empty --out, replacing the files it exports.", metavar=""
        ),
    ] = False,
    snapshot: Annotated[
        int | None,
        typer.Option(help="Export snapshot ITERATION (RUN_DIR/snapshots/) instead of the final set."),
    ] = None,
    debug: Debug = False,
) -> None:
    """Export a run's synthetic set for other tools: MTT's .pt files, PNG class folders, an image dataset."""
    with cli_errors(debug):
        from distillkit.artifacts import synthetic_pixels, training_labels
        from distillkit.interop import class_folders, export_mtt, export_png_folder, hf_split_words
        from distillkit.labels import is_soft

        if fmt not in EXPORT_FORMATS:
            from distillkit.errors import ConfigError

            raise ConfigError(f"--format {fmt!r} is not one of {', '.join(EXPORT_FORMATS)}")
        images, labels, lr, meta, extra = _read_run_set(run_dir, snapshot)
        _check_out_dir(out_dir, run_dir, overwrite)
        whitened = bool(meta.get("zca"))
        if fmt == "mtt":
            mtt_labels = training_labels(labels.long(), extra, len(meta["class_names"]))
            export_mtt(out_dir, images, mtt_labels, lr)
            kind = "soft-label logits" if is_soft(mtt_labels) else "labels"
            out.print(f"{len(images)} images, {kind} and lr (MTT format) → {out_dir}", highlight=False)
            zca = " --set data.zca=true" if whitened else ""
            if whitened:
                out.print("the images are ZCA-whitened, as the networks saw them", highlight=False)
            out.print(
                f"evaluate them with: distillkit evaluate --mtt {out_dir} --dataset {meta['dataset']}{zca}",
                highlight=False,
                soft_wrap=True,
            )
        else:
            pixels = synthetic_pixels(images, meta, extra)  # refuses a ZCA set without its transform
            folders = class_folders(meta["class_names"])
            root = out_dir / IMAGEFOLDER_SPLIT if fmt == "imagefolder" else out_dir
            export_png_folder(root, pixels, labels, folders)
            _drop_stale_pngs(root, labels, folders)
            classes = len(set(labels.tolist()))
            out.print(f"{len(images)} PNGs in {classes} class folders → {root}", highlight=False)
            if whitened:
                out.print(
                    "the PNGs show the ZCA-inverted images (the networks see the whitened ones)",
                    highlight=False,
                )
            if fmt == "imagefolder":
                _print_loaders(out_dir, hf_split_words(folders))


def _print_loaders(out_dir: Path, split_like: list[str]) -> None:
    """How torchvision and Hugging Face load the folder, and a class name the latter misreads."""
    out.print(
        f"load it with torchvision.datasets.ImageFolder('{out_dir / IMAGEFOLDER_SPLIT}') or "
        f"datasets.load_dataset('imagefolder', data_dir='{out_dir}')['train']",
        highlight=False,
        soft_wrap=True,
    )
    if split_like:
        out.print(
            f"note: Hugging Face also reads the class folder {split_like[0]!r} as a split name; use "
            f"data_files={{'train': '{out_dir / IMAGEFOLDER_SPLIT}/**'}} instead of data_dir",
            highlight=False,
            soft_wrap=True,
        )


def _read_run_set(
    run_dir: Path, snapshot: int | None = None
) -> tuple[Tensor, Tensor, float, dict[str, Any], dict[str, Tensor]]:
    """A run's set (final or a snapshot), checked against its metadata (shape, classes, finiteness, lr)."""
    from distillkit import api
    from distillkit.artifacts import SYNTHETIC_JSON, load_synthetic
    from distillkit.errors import ConfigError, StoreError
    from distillkit.snapshots import load_snapshot

    if not run_dir.is_dir() or not any((run_dir / n).exists() for n in ("config.json", SYNTHETIC_JSON)):
        raise ConfigError(
            f"{run_dir} is not a run directory (no config.json or {SYNTHETIC_JSON})",
            hint="export takes the --out folder of `distillkit run` or `distillkit distill`",
        )
    if snapshot is None:
        images, labels, lr, meta, extra = load_synthetic(run_dir)
    else:
        images, labels, lr, meta, extra = load_snapshot(run_dir, snapshot)
    shape, names, dataset = meta.get("image_shape"), meta.get("class_names"), meta.get("dataset")
    if not (
        isinstance(shape, list)
        and len(shape) == 3
        and all(isinstance(v, int) for v in shape)
        and isinstance(names, list)
        and names
        and all(isinstance(v, str) for v in names)
        and isinstance(dataset, str)
    ):
        raise StoreError(
            f"{run_dir / SYNTHETIC_JSON} lacks the set's dataset, image_shape or class_names",
            hint="the run directory was altered or not written by distillkit; re-run the distillation",
        )
    api.check_set_fits(
        images,
        labels,
        lr,
        dataset,
        shape,
        len(names),
        hint="the run directory was altered; re-run the distillation",
    )
    return images, labels, lr, meta, extra


def _check_out_dir(out_dir: Path, run_dir: Path, overwrite: bool) -> None:
    """``--out`` is a new or empty folder (any folder with ``--overwrite``), never the run's own."""
    from distillkit.errors import ConfigError

    target, run = out_dir.resolve(), run_dir.resolve()
    if target == run or run in target.parents:
        raise ConfigError(
            f"--out {out_dir} is inside the run directory {run_dir}",
            hint="export to a folder outside the run, e.g. --out exports/<name>",
        )
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} exists and is not a folder", hint="choose a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise ConfigError(
            f"--out {out_dir} is not empty",
            hint="choose a new or empty folder, or add --overwrite to replace the exported files there",
        )


def _drop_stale_pngs(root: Path, labels: Tensor, folders: list[str]) -> None:
    """Remove ``<class>/<i>.png`` beyond this set's count, left by an earlier, larger export.

    Only with ``--overwrite`` can the folder hold any; without it a later ImageFolder
    reader would count those images as part of this set.
    """
    counts = [0] * len(folders)
    for label in labels.tolist():
        counts[int(label)] += 1
    for label, name in enumerate(folders):
        folder = root / name
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            found = _PNG_NAME.match(path.name)
            if found and path.is_file() and int(found.group(1)) >= counts[label]:
                path.unlink()
