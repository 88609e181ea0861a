"""Write the tiny LeRobot policy directories the main test suite serves (test/fixtures/lerobot_*).

    .venv-lerobot/bin/python -m parity.make_fixture [--out test/fixtures]

Each is a real LeRobot 0.6.1 save (parity/lerobot_reference.py: tiny dims, every parameter
re-randomised from seed 0) plus a small word-level tokenizer.json made with the `tokenizers`
library (the real PaliGemma tokenizer lives on the hub). The main suite (Python 3.11, no LeRobot)
loads them through flashrt_ros only; parity/ proves the loader on the same kind of directory.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers, processors

from parity.lerobot_reference import build, save

WORDS = ("task state action pick place put up down the a an to of on in red green blue yellow cube cup block "
         "bowl drawer open close top bottom left right go move grasp release push pull stop home").split()
SPECIAL = ["<pad>", "<eos>", "<bos>", "<unk>"]   # PaliGemma's ids 0..3


def write_tokenizer(directory: Path, vocab_size: int) -> None:
    vocab = {tok: i for i, tok in enumerate(SPECIAL)}
    for tok in [*WORDS, *(str(n) for n in range(256)), ",", ":", ";", ".", "_"]:
        vocab.setdefault(tok, len(vocab))
    if len(vocab) > vocab_size:
        raise ValueError(f"tokenizer has {len(vocab)} entries, the model's vocabulary {vocab_size}")
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<pad>", "bos_token": "<bos>"}) + "\n")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("test/fixtures"))
    ap.add_argument("--kinds", default="pi0,pi05")
    args = ap.parse_args(argv)
    for kind in args.kinds.split(","):
        target = args.out / f"lerobot_{kind}_tiny"
        if target.exists():
            shutil.rmtree(target)
        save(*build(kind, "tiny", seed=0), target)
        arch = json.loads((target / "arch.json").read_text())
        write_tokenizer(target, arch["vlm"]["vocab_size"])
        print(f"{target}: {sum(f.stat().st_size for f in target.iterdir()) / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
