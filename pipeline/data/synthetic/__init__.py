"""Seeded generators for the embedded default data (no files read or written here).

`isic`: ISIC-style 7-class dermoscopy images; `acne`: face-skin images with acne label maps.
The adapters in `pipeline.data.adapters.synthetic` write them to disk.
"""
