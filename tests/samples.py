"""Sample inputs shared by tests."""

GENEVA = {
    "type": "Polygon",
    "coordinates": [[[6.10, 46.18], [6.19, 46.18], [6.19, 46.23], [6.10, 46.23], [6.10, 46.18]]],
}


def job_body(**overrides):
    """A valid `POST /jobs` body (Geneva at zoom 14), with any field overridden."""
    return {"name": "test job", "zoom": 14, "area": GENEVA, **overrides}
