"""The HTTP routes, one module per area: each holds its views and declares them, with their models,
in its `routes()` (a `Route` per line; see `plasmad.api.contract`).

`plasmad.api.http.routes()` puts them together in the order the served spec lists its paths and
tags: health, jobs, dataset, training, operations, events, spec, reproduce, models, board. A new
route goes into its area's `routes()`; a new area into that list.
"""
