"""Devices and the jobs that run on them: a device's `kiln agent` registers it and long-polls for profile and
inference jobs, which the API queues here (the same database as the compilation jobs, modelkiln.jobs.schema).

The server never reaches a device: the agent asks for work and reports back, over SigV4-signed awsJson calls
(Kiln.* operations, api/kiln_api.py). A claimed job holds a lease the agent renews; a lease that runs out fails
the job with the time it was noticed, so no job stays RUNNING after its agent is gone.
"""
