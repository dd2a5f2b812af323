import io


def training_set_upload(api, content: bytes):
    """POST a JSONL of pairs to /training-sets/ as a client would."""
    upload = io.BytesIO(content)
    upload.name = "pairs.jsonl"
    return api.post("/api/v1/training-sets/", {"file": upload}, format="multipart")
