"""Every wire and storage shape of scoregate, as msgspec Structs.

This package imports nothing else of scoregate; the gateway and the write-back side
both speak through it.
"""
