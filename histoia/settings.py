"""Settings for Histo-IA, all from environment variables.

The defaults are the embedded, single-machine stack (SQLite and kombu's filesystem broker under
var/), so `make run` needs nothing but Python. Production sets DATABASE_URL and CELERY_BROKER_URL
(PostgreSQL and RabbitMQ) and the same code runs unchanged.
"""

from base64 import b64encode
from hashlib import sha256
from pathlib import Path

import environ
from csp.constants import NONE, SELF

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

# Local state of the embedded stack (SQLite file, broker folders, media by default).
VAR_DIR = Path(env("HISTOIA_VAR_DIR", default=str(BASE_DIR / "var")))

DEBUG = env.bool("DEBUG", default=False)
# A development key is only tolerated with DEBUG on; production must set its own.
SECRET_KEY = env("SECRET_KEY", default="dev-only-insecure-key" if DEBUG else environ.Env.NOTSET)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_results",
    "django_celery_beat",
    "django_htmx",
    "axes",
    "experiments",
    "predictions",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Last, as django-axes asks: it answers a locked-out login attempt.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "histoia.urls"
WSGI_APPLICATION = "histoia.wsgi.application"
ASGI_APPLICATION = "histoia.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------
VAR_DIR.mkdir(exist_ok=True)
DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'histoia.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The web process and several worker processes write at once: WAL lets readers go on while
    # one writes, the busy timeout makes a writer wait instead of failing with "database is
    # locked", and IMMEDIATE transactions take the write lock up front so they never deadlock.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # Worker processes started by the tests must see the test database, so it is a file.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test.sqlite3")}
else:
    DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("CONN_MAX_AGE", default=60))
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    # A worker machine that vanishes mid-transaction (a power cut, a cable pulled) leaves its
    # session open on the server until TCP gives up, which takes hours; a row lock it held (the
    # dispatcher's, a slide's) would stop every other worker meanwhile. The only transactions that
    # wait on something else are uploads of several files (each file is copied into storage
    # inside one transaction): the default leaves room for copying tens of GB to slow storage.
    _idle_ms = env.int("DATABASE_IDLE_TRANSACTION_SECONDS", default=1800) * 1000
    DATABASES["default"].setdefault("OPTIONS", {})["options"] = f"-c idle_in_transaction_session_timeout={_idle_ms}"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Auth -----------------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# Failed logins are counted per user name and address (django-axes): after AXES_FAILURE_LIMIT
# in a row that pair is locked out for AXES_COOLOFF_HOURS, and even the right password is
# refused. Admins see and lift lockouts in the admin (Axes: access attempts; delete the row), or
# with `manage.py axes_reset_username NAME`. A successful login resets the count.
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
AXES_FAILURE_LIMIT = env.int("AXES_FAILURE_LIMIT", default=10)
AXES_COOLOFF_TIME = env.float("AXES_COOLOFF_HOURS", default=1.0)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_VERBOSE = False
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "predictions:dashboard"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = env("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

# --- Files ----------------------------------------------------------------------------------
STATIC_URL = "static/"
STATIC_ROOT = env("STATIC_ROOT", default=str(BASE_DIR / "staticfiles"))
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if not DEBUG
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
# Media are never served as plain static files: every slide, thumbnail and result goes through
# a view that checks the user's lab (see experiments.views.slide_thumbnail).
MEDIA_ROOT = env("MEDIA_ROOT", default=str(VAR_DIR / "media"))
MEDIA_URL = "/media/"
# Rendered viewer tiles are cached here (default: MEDIA_ROOT/cache/tiles); point it at a local
# disk when MEDIA_ROOT is a network share.
VIEWER_TILE_CACHE_DIR = env("VIEWER_TILE_CACHE_DIR", default="")
# A lab's file share that slides can be imported from; empty means import is off.
SLIDE_IMPORT_ROOT = env("SLIDE_IMPORT_ROOT", default="")
# Largest slide accepted by upload, in bytes (default 20 GiB). Checked while streaming.
SLIDE_UPLOAD_MAX_BYTES = env.int("SLIDE_UPLOAD_MAX_BYTES", default=20 * 1024**3)
# Uploads above 2.5 MB stream to a temporary file on disk, never into memory.
FILE_UPLOAD_MAX_MEMORY_SIZE = 2_621_440
FILE_UPLOAD_TEMP_DIR = env("FILE_UPLOAD_TEMP_DIR", default=None)
if FILE_UPLOAD_TEMP_DIR:
    Path(FILE_UPLOAD_TEMP_DIR).mkdir(parents=True, exist_ok=True)
FILE_UPLOAD_PERMISSIONS = 0o640
FILE_UPLOAD_HANDLERS = ["experiments.uploads.SlideSizeLimitHandler"]

# --- Security (check --deploy is clean when DEBUG is off) -----------------------------------
# X-Forwarded-Proto is trusted only when a TLS reverse proxy in front sets it (and strips what a
# client sent): without one, any client could claim https.
BEHIND_TLS_PROXY = env.bool("BEHIND_TLS_PROXY", default=False)
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if BEHIND_TLS_PROXY else None
# The client address of a login attempt (django-axes): X-Forwarded-For only from the proxy in
# front (its last hop), else the connection's own address, so no client can pick a new one per try.
AXES_IPWARE_META_PRECEDENCE_ORDER = ["HTTP_X_FORWARDED_FOR", "REMOTE_ADDR"] if BEHIND_TLS_PROXY else ["REMOTE_ADDR"]
AXES_IPWARE_PROXY_COUNT = 1 if BEHIND_TLS_PROXY else None
SESSION_COOKIE_SECURE = env.bool("SECURE_COOKIES", default=not DEBUG)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=not DEBUG)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0 if DEBUG else 31_536_000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = not DEBUG
SECURE_HSTS_PRELOAD = not DEBUG
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

# Content-Security-Policy (django-csp): pages run only the site's own script files and style sheets,
# so markup that slipped into a page (a slide name, a model card) cannot run or restyle anything.
# No inline <script>, on*= handler, style="…" or <style>, no eval, nothing from another origin:
# templates keep behaviour in static/js (listeners found by data- attributes) and styles in
# static/css; a size or colour computed per page is an SVG attribute or set from a script
# (element.style, which CSP allows). htmx runs without eval or its own <style> (base.html), the API
# docs load their start-up script as a file (histoia/api_urls.py). One inline piece is allowed, by
# the hash of its exact text: the <style> OpenSeadragon (the slide viewer) adds for touch screens,
# which no option turns off; it changes with OpenSeadragon's version (the tests compare the two).
# tests/test_content_security_policy.py checks the pages, and in Chromium that nothing is refused.
OPENSEADRAGON_STYLE = ("@media (hover: none) {    .openseadragon-canvas:focus {"
                       "        outline: none !important;    }}")
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF, f"'sha256-{b64encode(sha256(OPENSEADRAGON_STYLE.encode()).digest()).decode()}'"],
        # data: for the icons in Swagger UI's style sheet, blob: for images a viewer decodes itself.
        "img-src": [SELF, "data:", "blob:"],
        "connect-src": [SELF],
        "font-src": [SELF],
        "object-src": [NONE],
        "base-uri": [SELF],
        "frame-ancestors": [NONE],  # as X_FRAME_OPTIONS
        "form-action": [SELF],
    },
}

# --- REST framework -------------------------------------------------------------------------
# The API lives under /api/v1/ (histoia/api_urls.py): token or session authentication, every
# object scoped to the user's labs, OpenAPI 3 schema at /api/schema/ and docs at /api/docs/.
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # Token first: an unauthenticated request gets 401 with a WWW-Authenticate header.
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "histoia.pagination.Pagination",
    # Bounded JSON (size, nesting) and a JSON 413 for a body over the size limit.
    "DEFAULT_PARSER_CLASSES": ["histoia.api.JSONParser", "rest_framework.parsers.FormParser",
                               "rest_framework.parsers.MultiPartParser"],
    "EXCEPTION_HANDLER": "histoia.api.exception_handler",
    # API writes per user (histoia/api.py): a burst, and a sustained rate.
    "DEFAULT_THROTTLE_CLASSES": ["histoia.api.WriteBurstThrottle", "histoia.api.WriteSustainedThrottle"],
    "DEFAULT_THROTTLE_RATES": {"write_burst": env("API_WRITE_THROTTLE_BURST", default="30/min"),
                               "write_sustained": env("API_WRITE_THROTTLE_SUSTAINED", default="1000/hour")},
    "PAGE_SIZE": 25,
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "histoia.api_schema.AutoSchema",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Histo-IA API",
    "DESCRIPTION": (
        "Experiments, slides, pipelines and predictions of your labs. Authenticate with "
        "`Authorization: Token <key>` (an admin creates the key, or `manage.py drf_create_token USER`) "
        "or with the browser session. Submitting a prediction answers at once (202) with its id and "
        "status URL; poll that URL for progress."
    ),
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    # Swagger UI's files come from the drf-spectacular-sidecar package, not from a CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "ENUM_NAME_OVERRIDES": {
        "StatusEnum": "predictions.models.Status",
        "SlideStatusEnum": "experiments.models.SlideStatus",
    },
}

# --- Celery ---------------------------------------------------------------------------------
# Read by histoia/celery.py (namespace CELERY_). The broker defaults to kombu's filesystem
# transport: folders under var/broker, polled often enough that a click feels immediate.
BROKER_DIR = VAR_DIR / "broker"
# Several RabbitMQ nodes of one cluster are listed separated by ";" (amqp://u:p@rabbit-1:5672/v;
# amqp://u:p@rabbit-2:5672/v;...): every process connects to the first that answers and moves
# to the next when its node goes away (docs/deploy.md, "RabbitMQ cluster").
CELERY_BROKER_URL = env("CELERY_BROKER_URL", default="filesystem://")
CELERY_BROKER_IS_AMQP = CELERY_BROKER_URL.startswith(("amqp://", "amqps://", "pyamqp://"))
# The type of the cpu and gpu queues on RabbitMQ: "classic" (a single node), or "quorum" (a
# cluster of three or more nodes: the queues and their messages are replicated, and survive the
# loss of any one node). Chosen once per broker: RabbitMQ refuses to declare an existing queue
# again with another type, so switching means deleting the two queues while they are empty.
CELERY_BROKER_QUEUE_TYPE = env("CELERY_BROKER_QUEUE_TYPE", default="classic")
if CELERY_BROKER_QUEUE_TYPE not in ("classic", "quorum"):
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured(
        f"CELERY_BROKER_QUEUE_TYPE must be classic or quorum, not {CELERY_BROKER_QUEUE_TYPE!r}")
if CELERY_BROKER_URL.startswith("filesystem://"):
    for sub in ("queue", "processed", "control"):
        (BROKER_DIR / sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_DIR / "queue"),
        "data_folder_out": str(BROKER_DIR / "queue"),
        "processed_folder": str(BROKER_DIR / "processed"),
        # Exchange bindings, so routing to the cpu/gpu queues and broadcasts (revoke) work.
        "control_folder": str(BROKER_DIR / "control"),
        "store_processed": False,
        # A worker with prefetch 1 and late acks asks for its next message only once the last
        # one is acknowledged, so every batch waits for a poll: keep that wait short. A poll
        # lists one small folder.
        "polling_interval": 0.05,
    }
elif CELERY_BROKER_IS_AMQP:
    # Publisher confirms: a submit only returns once RabbitMQ has the message.
    CELERY_BROKER_TRANSPORT_OPTIONS = {"confirm_publish": True}
    # The gpu worker's solo pool cannot answer AMQP heartbeats while a batch runs; RabbitMQ
    # would then drop the connection and redeliver the batch. TCP keepalive still detects a
    # dead peer.
    CELERY_BROKER_HEARTBEAT = 0
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {}
CELERY_RESULT_BACKEND = "histoia.result_backend:RetryingDatabaseBackend"  # django-db, retrying
CELERY_RESULT_EXTENDED = True
CELERY_CACHE_BACKEND = "default"
CELERY_TIMEZONE = TIME_ZONE
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_WORKER_CONCURRENCY = env.int("CELERY_WORKER_CONCURRENCY", default=None)
# Worker processes run at this niceness (0-19), so the pages stay fast while every core computes.
CELERY_WORKER_NICENESS = env.int("CELERY_WORKER_NICENESS", default=10)
# Worker processes keep freed memory for reuse (histoia/malloc.py; glibc only): blocks under the
# first size come from malloc's heap, and up to the second is kept free there. 0 = glibc's own.
WORKER_MALLOC_MMAP_THRESHOLD_MB = env.int("WORKER_MALLOC_MMAP_THRESHOLD_MB", default=32)
WORKER_MALLOC_TRIM_THRESHOLD_MB = env.int("WORKER_MALLOC_TRIM_THRESHOLD_MB", default=64)
# Old task results are removed by Histo-IA's own scheduled task (predictions.cpu.expire_task_results,
# TASK_RESULT_EXPIRE_DAYS below), which keeps rows of tasks still queued; None stops beat from also
# installing celery.backend_cleanup, which would delete every row older than a day, queued or not.
CELERY_RESULT_EXPIRES = None

# --- Maintenance (scheduled by beat; see predictions/maintenance.py) --------------------------
# Celery task results older than this are deleted (predictions keep their own records).
TASK_RESULT_EXPIRE_DAYS = env.int("TASK_RESULT_EXPIRE_DAYS", default=30)
# A running prediction with no progress for this long, and none of its work queued or running,
# has its missing work sent again; after STUCK_PREDICTION_MAX_REQUEUES such attempts without
# progress its unfinished slides fail with a reason.
STUCK_PREDICTION_MINUTES = env.int("STUCK_PREDICTION_MINUTES", default=15)
STUCK_PREDICTION_MAX_REQUEUES = env.int("STUCK_PREDICTION_MAX_REQUEUES", default=3)
# A queued prediction whose start message never reached the broker is sent again after this long.
QUEUED_RESEND_AFTER_SECONDS = env.int("QUEUED_RESEND_AFTER_SECONDS", default=60)
# Predictions queued or running at once, per user and per lab (0: no limit); a submit past
# either is refused with a message (the API: 429).
HISTOIA_MAX_ACTIVE_PER_USER = env.int("HISTOIA_MAX_ACTIVE_PER_USER", default=100)
HISTOIA_MAX_ACTIVE_PER_LAB = env.int("HISTOIA_MAX_ACTIVE_PER_LAB", default=300)
# Slide files one lab may store, in GB (a lab's own quota, set in the admin, wins); 0: no limit.
HISTOIA_LAB_STORAGE_QUOTA_GB = env.int("HISTOIA_LAB_STORAGE_QUOTA_GB", default=500)
# The dispatcher (predictions/dispatch.py) keeps, per queue, as many steps in the broker as the
# queue's worker processes can run plus this many ready to start: enough that no process waits
# for its next step, few enough that the queue's order is the order of execution.
HISTOIA_DISPATCH_AHEAD = env.int("HISTOIA_DISPATCH_AHEAD", default=1)
# A tile batch is at least this many seconds of work at the speed its pipeline was measured at
# on its queue (engine.prepare): on a fast worker (a GPU) a batch sized for progress would
# take less than its own fixed cost (a message, a claim, a row). 0: the pipelines' own sizing.
HISTOIA_MIN_BATCH_SECONDS = env.float("HISTOIA_MIN_BATCH_SECONDS", default=1.0)
# Worker processes per queue assumed until workers report themselves (they do as they start).
HISTOIA_DEFAULT_PROCESSES = {"cpu": env.int("HISTOIA_DEFAULT_CPU_PROCESSES", default=2),
                             "gpu": env.int("HISTOIA_DEFAULT_GPU_PROCESSES", default=1)}

# Linked from the staff monitoring page (Flower runs behind its own authentication).
FLOWER_URL = env("FLOWER_URL", default="")

# Recorded in every result's provenance.
HISTOIA_VERSION = "0.1.0"

# --- Logging --------------------------------------------------------------------------------
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", default="INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
