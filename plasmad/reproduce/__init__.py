"""Reproductions of a page and consistency checks: renders made again and compared (issue 12).

`ops` (what the APIs call), `page` (a page's stored workflow and fingerprints, checked against the
files now), `records` (what is stored under the state dir), `compare` (pixels, SSIM), `sheet`
(the contact sheet). See docs/reproduce.md.
"""
