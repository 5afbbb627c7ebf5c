"""Train the shipped digits CNN: float training, BN folding, then W4A4 QAT (8-bit first/last).

    python models/train_digits.py                 # power-of-two steps -> models/digits_cnn_w4a4.ckpt
    python models/train_digits.py --free-scales   # free LSQ steps     -> models/digits_cnn_w4a4_lsq.ckpt
    python models/train_digits.py --weight-format pot   # power-of-two weights -> models/digits_cnn_w4a4_pot.ckpt

Deterministic (fixed seeds, deterministic torch algorithms, 2 threads); about 30 s on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from qexport.checkpoint import checkpoint_from_model, save_checkpoint
from qexport.data import digits_split
from qexport.frontend.prepare import prepare_qat
from qexport.quant.config import QuantConfig
from qexport.training import accuracy, calibrate, seed_everything, train
from qexport.zoo import build

HERE = Path(__file__).parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--free-scales", action="store_true", help="learn unconstrained (non power-of-two) steps")
    parser.add_argument(
        "--weight-format",
        choices=["int_affine", "pot"],
        default="int_affine",
        help="middle layers' weights: LSQ integers or power-of-two levels",
    )
    parser.add_argument("--float-epochs", type=int, default=40)
    parser.add_argument("--qat-epochs", type=int, default=40)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(2)
    seed_everything(0)
    started = time.perf_counter()
    x_train, y_train, x_test, y_test = digits_split()
    model = train(build("digits_cnn"), x_train, y_train, args.float_epochs, lr=1e-2, seed=0, log=print)
    float_accuracy = accuracy(model, x_test, y_test)
    print(f"float test accuracy {float_accuracy:.4f}")
    config = QuantConfig(
        weight_bits=4,
        act_bits=4,
        first_bits=8,
        last_bits=8,
        pow2_scales=not args.free_scales,
        weight_method=args.weight_format,
    )
    qat = prepare_qat(model, config)
    calibrate(qat, x_train[:256])
    print(f"after calibration {accuracy(qat, x_test, y_test):.4f}")
    qat = train(qat, x_train, y_train, args.qat_epochs, lr=2e-3, seed=1, log=print)
    qat_accuracy = accuracy(qat, x_test, y_test)
    seconds = time.perf_counter() - started
    print(f"QAT test accuracy {qat_accuracy:.4f} ({seconds:.1f} s)")
    suffix = ("_lsq" if args.free_scales else "") + ("_pot" if args.weight_format == "pot" else "")
    name = f"digits_cnn_w4a4{suffix}.ckpt"
    output = args.output or HERE / name
    info = {
        "dataset": "digits",
        "float_accuracy": float_accuracy,
        "qat_accuracy": qat_accuracy,
        "train_seconds": round(seconds, 1),
        "trained_by": "models/train_digits.py",
    }
    save_checkpoint(output, checkpoint_from_model(qat, "digits_cnn", {}, config, **info))
    print(json.dumps({"checkpoint": str(output), **info}))


if __name__ == "__main__":
    main()
