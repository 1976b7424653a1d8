"""The device end of Kiln: `kiln agent` registers a device with a Kiln server and runs the profile and
inference jobs queued for it; `kiln devices`, `kiln profile` and `kiln infer` call the same API from anywhere.

It ships with the runtime (the modelkiln-runtime distribution) and needs only the standard library in its own
process: Python 3.8+, urllib, SigV4 signed here (sigv4.py). Each job runs in a forked child, which alone imports
numpy, the runtime and the backend, so a profile's cold load is the cost a fresh application pays.
"""
