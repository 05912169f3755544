"""cDSTs written before a branch group gained a tree (ecl_full, issue 16) are not reused."""

from __future__ import annotations

import json

from b2luca import production as P
from b2luca.conditions import DatabaseChain
from b2luca.iov import ExpRun


def test_manifest_with_other_group_trees_is_not_current(tmp_path):
    chain = DatabaseChain([])
    exprun = ExpRun(26, 1)
    manifest = {"format_version": P.FORMAT_VERSION, "groups": P._group_fingerprints(chain, exprun),
                "group_trees": {g: list(t) for g, t in P.GROUP_TREES.items()}, "files": {}}
    (tmp_path / P.MANIFEST).write_text(json.dumps(manifest))
    assert P.manifest_is_current(tmp_path, chain, exprun)
    manifest["group_trees"]["hits"] = [t for t in manifest["group_trees"]["hits"] if t != "ecl_full"]
    (tmp_path / P.MANIFEST).write_text(json.dumps(manifest))
    assert not P.manifest_is_current(tmp_path, chain, exprun)
