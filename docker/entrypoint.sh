#!/usr/bin/env sh
# Roles: web | worker-gpu | worker-cpu | beat | migrate | <any command>.
# DATABASE_URL, CELERY_BROKER_URL and SECRET_KEY are required: nothing embedded starts here.
set -eu

require() {
  for name in "$@"; do
    eval "value=\${$name:-}"
    if [ -z "$value" ]; then
      echo "entrypoint: $name must be set (see docker/README.md)" >&2
      exit 64
    fi
  done
}

role="${1:-web}"
case "$role" in
  web)
    require DATABASE_URL CELERY_BROKER_URL SECRET_KEY
    python manage.py migrate --noinput
    python manage.py register_model
    exec gunicorn embedhub.wsgi:application --bind "0.0.0.0:${PORT:-8000}" \
      --workers "${WEB_CONCURRENCY:-3}" --timeout 120 --access-logfile -
    ;;
  worker-gpu)
    require DATABASE_URL CELERY_BROKER_URL SECRET_KEY
    exec celery -A embedhub worker -Q gpu -c "${WORKER_CONCURRENCY:-1}" -n "gpu@%h" --loglevel=INFO
    ;;
  worker-cpu)
    require DATABASE_URL CELERY_BROKER_URL SECRET_KEY
    exec celery -A embedhub worker -Q cpu,gpu -c "${WORKER_CONCURRENCY:-2}" -n "cpu@%h" --loglevel=INFO
    ;;
  beat)
    require DATABASE_URL CELERY_BROKER_URL SECRET_KEY
    exec celery -A embedhub beat -S django_celery_beat.schedulers:DatabaseScheduler --loglevel=INFO
    ;;
  migrate)
    require DATABASE_URL SECRET_KEY
    exec python manage.py migrate --noinput
    ;;
  *)
    exec "$@"
    ;;
esac
