"""Applications built on the library, not parts of it: each uses the pipeline end to end, and nothing in the
pipeline imports them. `demo` (`thread-bundler demo`): the whole tool on a local Medplum server.
"""
