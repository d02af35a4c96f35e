"""The web app `fmnist-lab serve` runs: `app` builds it, `index.html` is its page."""

MAX_UPLOAD_BYTES = 10 * 1024 * 1024  # the default limit of one upload
