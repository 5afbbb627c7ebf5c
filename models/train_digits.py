"""Train the shipped digits checkpoints: one float model, then every method from it (W4A4, 8-bit first/last).

    python models/train_digits.py              # every checkpoint listed in SHIPPED
    python models/train_digits.py pot post     # just these

Deterministic (fixed seeds, deterministic torch algorithms, 2 threads). The float weights are saved to
models/digits_cnn_float.safetensors so `qexport-train METHOD --float ...` starts from the same model.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from qexport.checkpoint import checkpoint_from_model, save_checkpoint, save_float_weights
from qexport.data import digits_split
from qexport.methods import run_method
from qexport.quant.config import QuantConfig
from qexport.train_cli import ARCHITECTURE, train_float
from qexport.training import accuracy, seed_everything

HERE = Path(__file__).parent
FLOAT = HERE / "digits_cnn_float.safetensors"
# checkpoint file -> (method, power-of-two scales)
SHIPPED = {
    "digits_cnn_w4a4.ckpt": ("lsq", True),
    "digits_cnn_w4a4_lsq.ckpt": ("lsq", False),
    "digits_cnn_w4a4_pot.ckpt": ("pot", True),
    "digits_cnn_w4a4_post.ckpt": ("post", True),
    "digits_cnn_w4a4_asq.ckpt": ("asq", True),
    "digits_cnn_w4a4_apot.ckpt": ("apot", True),
    "digits_cnn_w4a4_codebook.ckpt": ("codebook", True),
    "digits_cnn_w4a4_ddq.ckpt": ("ddq", True),
    "digits_cnn_w4a4_pqde.ckpt": ("pqde", True),
    "digits_cnn_w4a4_rapq.ckpt": ("rapq", True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help=f"checkpoints or methods to train (default: all of {list(SHIPPED)})")
    args = parser.parse_args()
    wanted = {
        name: spec
        for name, spec in SHIPPED.items()
        if not args.names or name in args.names or spec[0] in args.names
    }
    torch.set_num_threads(2)
    started = time.perf_counter()
    float_model, float_accuracy = train_float(print)
    print(f"float test accuracy {float_accuracy:.4f}")
    save_float_weights(
        FLOAT, float_model, ARCHITECTURE, {}, float_accuracy=float_accuracy, trained_by="models/train_digits.py"
    )
    x_train, y_train, x_test, y_test = digits_split()
    for name, (method, pow2) in wanted.items():
        seed_everything(1)
        config = QuantConfig(weight_bits=4, act_bits=4, first_bits=8, last_bits=8, pow2_scales=pow2)
        trained = run_method(method, float_model, config, (x_train, y_train), epochs=40, lr=2e-3, seed=1, log=print)
        info = {
            "dataset": "digits",
            "float_accuracy": float_accuracy,
            "qat_accuracy": accuracy(trained.model, x_test, y_test),
            **trained.info,
            "trained_by": "models/train_digits.py",
        }
        save_checkpoint(HERE / name, checkpoint_from_model(trained.model, ARCHITECTURE, {}, trained.config, **info))
        print(json.dumps({"checkpoint": name, **info}))
    print(f"done in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
