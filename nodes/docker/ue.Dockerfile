# UE client image: the offline Debian base plus the UE's runtime settings.
# The project's code and .venv are bind-mounted read-only at their host path at run time.
ARG BASE
FROM ${BASE}
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /tmp
CMD ["sleep", "infinity"]
