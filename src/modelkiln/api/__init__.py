"""The HTTP face of `kiln serve`: the SageMaker awsJson API and an S3 endpoint on one port.

    app = create_app(Services(accounts, jobs, objects))
    uvicorn.run(app, host="127.0.0.1", port=8080)
"""
from modelkiln.api.app import create_app
from modelkiln.api.services import Services

__all__ = ["Services", "create_app"]
