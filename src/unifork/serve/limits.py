"""Every bound the server puts on a request, in one place (the API docs and /v1/info read them from here).

Checks that need the model (a prompt's tokens against its context) live in runner.py; these are the static ones.
"""

MAX_PROMPT_BYTES = 1_000  # UTF-8 bytes; the token check against the model's context is usually the tighter one
MAX_QUESTION_BYTES = 500
MAX_IMAGES_PER_REQUEST = 16  # a batch holds MAX_IMAGES (64) images: one request never takes all of it
MAX_CFG = 50.0
MAX_TEMPERATURE = 10.0
MAX_TOP_K = 1 << 20  # any k at or above the vocabulary size means "off"
MAX_SEED = 2**53 - 1  # the largest integer a JavaScript client's JSON keeps exact, so seeds round-trip

MAX_IMAGE_BYTES = 10 * 1024 * 1024  # an uploaded (or base64-decoded) image file
MAX_IMAGE_SIDE = 8192  # pixels, checked from the header before any pixel is decoded
MAX_IMAGE_PIXELS = 4096 * 4096
MAX_BODY_BYTES = 16 * 1024 * 1024  # a whole request body: base64 makes a 10 MiB image 13.4 MiB of JSON
