"""The read path: the reader service and what it serves. Imports no faust, tensorflow or implicit."""
