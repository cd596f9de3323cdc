"""Sample inputs shared by tests."""

GENEVA = {
    "type": "Polygon",
    "coordinates": [[[6.10, 46.18], [6.19, 46.18], [6.19, 46.23], [6.10, 46.23], [6.10, 46.18]]],
}
