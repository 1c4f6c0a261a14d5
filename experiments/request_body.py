"""`python -m experiments.request_body N`: the JSON body a served fmae model takes, holding the
first N real FashionMNIST test images ({"inputs": float (N, 1, 28, 28) in [0, 1]}), for curl."""

import json
import sys

from experiments.data import N_TEST, load_fashion_mnist


def request_body(n: int) -> str:
    test = load_fashion_mnist(train_subset=1).test  # the test split is always all 10,000 images
    return json.dumps({"inputs": test.inputs[: min(n, N_TEST)].tolist()})


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    print(request_body(int(argv[0]) if argv else 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
