"""One module per schema revision, named NNNN_what.py; revision ids are the NNNN."""
