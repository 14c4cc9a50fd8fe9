# Production image for linkledger.  Used by docker-compose.yml (service "linkledger").
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Build from a scratch directory; the runtime only needs the installed package.
WORKDIR /src
COPY . .
RUN pip install . \
 && groupadd --system --gid 10001 linkledger \
 && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/linkledger \
      --shell /usr/sbin/nologin linkledger

WORKDIR /home/linkledger
USER 10001:10001

EXPOSE 8080
CMD ["linkledger", "serve"]
