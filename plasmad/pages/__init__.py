"""The pages feature: what the review board shows and does with the pipeline's pages.

The chapters, pages and versions listed from the generation logs (`listing`), a version's image,
thumbnail and workflow (`thumbnails`, `ops`), and new versions made from an old one: re-roll (its
settings, a new seed) and vary (its seed, another strength), rebuilt from its workflow file
(`settings`). New images go through `Core.submit_generation`, the same path and validation as
every other generation.
"""
