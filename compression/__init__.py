"""Update compression: pure encode/decode functions on flat float32 vectors.

Nothing here touches Flower; client/ and strategies/ wrap payloads in records.
"""
