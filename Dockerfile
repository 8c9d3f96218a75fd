# The wdml image, built with no registry: nothing is pulled. scripts/docker-build.sh
# first builds a fully static binary on the host (glibc linked with crt-static, so
# mimalloc, candle and tonic need no libc in the image), strips it into
# target/static/image/wdml, then runs `docker build -t wdml:latest .`; .dockerignore
# filters the context down to that one file.
#
# One image for every role: `/wdml coordinator`, `/wdml node`, and `/wdml health ADDR`
# for healthchecks (there is no shell and no curl in the image).
FROM scratch

COPY target/static/image/wdml /wdml

ENV RUST_LOG=info
# Coordinator 7000, a node's peer service 7001 (by convention; both are flags).
EXPOSE 7000 7001
ENTRYPOINT ["/wdml"]
CMD ["--help"]
