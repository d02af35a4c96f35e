"""`python -m fmnist_lab.serve`: a web page and a JSON API that classify your photos.

FastAPI on uvicorn, 127.0.0.1:8000 by default. `GET /` is the page (upload or drop a photo,
see the 28x28 image the model saw and its top-3 classes), `POST /predict` takes a multipart
upload (field `file`) or JSON `{"image": "<base64>"}` and answers the top-k classes,
`GET /healthz`, `GET /model` (which model answers), `GET /openapi.json` and `/docs`.
Bad input (not an image, empty, over the upload limit, too many pixels) gets a 4xx JSON
error, and the server keeps answering.
"""

from __future__ import annotations

import argparse

from fmnist_lab.errors import UserError, exit_cleanly
from fmnist_lab.options import add_data, add_port, add_tracking_uri, check_port_free
from fmnist_lab.predict import DEFAULT_MODEL
from fmnist_lab.preprocess import MAX_PIXELS
from fmnist_lab.web import MAX_UPLOAD_BYTES


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fmnist-lab serve",
                                     description="Serve the prediction page and API.")  # fmt: skip
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"registry reference, run id, model URI or folder "
                        f"(default {DEFAULT_MODEL})")  # fmt: skip
    add_tracking_uri(parser)
    add_data(parser, help="class names to use (default: the model's run says)")
    parser.add_argument("--host", default="127.0.0.1")
    add_port(parser, 8000)
    parser.add_argument("--max-upload-mb", type=float, default=MAX_UPLOAD_BYTES / 2**20)
    parser.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                        help="larger images are refused before decoding")  # fmt: skip
    return parser.parse_args(argv)


@exit_cleanly
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import mlflow  # after parsing: --help answers without loading the app's stack
    import uvicorn

    from fmnist_lab.predict import load_classifier, summary
    from fmnist_lab.web.app import create_app

    if args.max_upload_mb <= 0 or args.max_pixels <= 0:
        raise UserError("--max-upload-mb and --max-pixels must be positive")
    check_port_free(args.host, args.port)
    if args.tracking_uri:
        mlflow.set_tracking_uri(args.tracking_uri)
    classifier = load_classifier(args.model, args.data)
    app = create_app(classifier, int(args.max_upload_mb * 2**20), args.max_pixels)
    print(f"serving {summary(classifier.info)} at http://{args.host}:{args.port}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
