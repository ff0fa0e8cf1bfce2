"""Runs on machines sharing one output folder, started at once: exactly one claims it (README, running.md).

Writers in processes of their own are released together by a barrier, many times over; each round, one
creates the manifest and every other finds it and stops with the one line naming the winner's config.
The same race against S3 is in test_object_store.py.
"""

import json

from claim_race import race

WRITERS, ROUNDS = 4, 50


def test_of_writers_racing_for_a_new_folder_exactly_one_claims_it(tmp_path):
    folders = [tmp_path / f"round-{i}" for i in range(ROUNDS)]
    for folder in folders:
        folder.mkdir()
    for folder, outcomes in zip(folders, race([str(f) for f in folders], WRITERS)):
        winners = [name for name, error in outcomes if error is None]
        assert len(winners) == 1, outcomes
        assert json.loads((folder / "manifest.json").read_text()) == {"fingerprint": winners[0]}
        for name, error in outcomes:
            if name != winners[0]:
                assert error == (f"{folder} holds a dataset made with another config (fingerprint {winners[0]}, "
                                 f"this run {name}); choose another --out or delete that folder")
        assert [p.name for p in folder.iterdir()] == ["manifest.json"]  # no writer's temporary left
