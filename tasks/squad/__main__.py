"""Score a SQuAD prediction file like the official scripts:

    python -m tasks.squad DATA.json PREDICTIONS.json [--version 2]

PREDICTIONS.json maps question id -> answer text ("" = no answer). Prints one JSON object: v1
``exact_match``, ``f1``; v2 ``exact``, ``f1``, ``total``, ``HasAns_*``, ``NoAns_*`` (percentages).
"""

from __future__ import annotations

import argparse
import json
import sys

from tasks.squad.scoring import questions, score_predictions


def _read_json(path: str, what: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        sys.exit(f"error: cannot read {what} {path}: {e}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.squad", description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="official SQuAD json (v1.1 or v2.0 layout)")
    parser.add_argument("predictions", help="json object: question id -> answer text")
    parser.add_argument("--version", type=int, choices=(1, 2), default=1, help="scoring rules (default 1)")
    args = parser.parse_args(argv)
    dataset = _read_json(args.data, "dataset")
    predictions = _read_json(args.predictions, "predictions")
    if not isinstance(dataset, dict) or "data" not in dataset or not isinstance(predictions, dict):
        sys.exit("error: expected DATA.json with a 'data' list and PREDICTIONS.json as {id: answer text}")
    missing = sum(qid not in predictions for qid, _ in questions(dataset))
    if missing:
        print(f"warning: {missing} questions have no prediction; they score 0", file=sys.stderr)
    print(json.dumps(score_predictions(dataset, predictions, args.version)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
