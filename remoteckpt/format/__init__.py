"""The tensor bundle format as bytes: no I/O here.

Builders write to a sink (anything with ``write(bytes-like)``); readers take the bytes, or a
``read_at(offset, length)`` callable, from the caller.  Modules, from the bottom up:

    coding     varints, fixed-width integers, TF's masked CRC32C
    block      one LevelDB block: prefix-compressed entries and a restart array
    table      the SSTable that is a `.index` file: data blocks, index block, footer
    slices     boxes of a tensor, TF's slice keys, intersections
    payload    tensor bytes in a data file: fixed-width and string encodings
    bundle     header, entries, file names, the whole `.index` as a mapping
"""
