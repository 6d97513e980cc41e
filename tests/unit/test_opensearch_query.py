"""The OpenSearch request bodies that need no OpenSearch to check (the rest: tests/contract/test_search.py)."""

from __future__ import annotations

import pytest

from archive.adapters.opensearch_query import split_aggregations, totals_body
from archive.core.levels import Level
from archive.core.search import FACETS, SearchRequest


@pytest.mark.parametrize("level", [Level.STUDY, Level.SERIES, Level.IMAGE])
@pytest.mark.parametrize("facets", [FACETS, FACETS[:1], ()])
@pytest.mark.parametrize("parts", [1, 2, 3, 10])
def test_split_aggregations_sends_each_aggregation_once_with_the_same_query(level, facets, parts):
    request = SearchRequest(text="chest ct", level=level, facets=facets)
    body = totals_body(request, ["chest", "ct"])
    if body is None:  # the image level without facets: the page answers everything
        assert level is Level.IMAGE and not facets
        return
    bodies = split_aggregations(body, parts)
    assert len(bodies) == min(parts, len(body["aggs"]))
    names = [name for part in bodies for name in part["aggs"]]
    assert sorted(names) == sorted(body["aggs"]) and len(set(names)) == len(names)
    for part in bodies:
        assert part["aggs"]  # no request without an aggregation
        assert {k: v for k, v in part.items() if k != "aggs"} == {k: v for k, v in body.items() if k != "aggs"}
        assert all(part["aggs"][name] == body["aggs"][name] for name in part["aggs"])
