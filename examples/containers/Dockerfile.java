# databricks-token-broker in a Java function's container image (README, "Container-image
# functions"). An image function cannot attach layers, so the image carries the layer's tree
# in /opt, where Lambda looks for it: it starts every executable in /opt/extensions at init.
#
# From a Maven project (mvn package, dependencies copied to target/dependency, as AWS's guide to
# the Java base image has it), with this repository's dist/ after npm run build, for the
# function's architecture (the function's must be the same):
#   docker build --platform linux/amd64 --build-context broker=path/to/databricks-token-broker/dist \
#     -f path/to/databricks-token-broker/examples/containers/Dockerfile.java -t my-function .
#   docker build --platform linux/arm64 --build-arg ARCH=arm64 --build-context broker=... (the same)

# The with-Node.js flavour's architecture, in Lambda's words: x86_64 or arm64.
ARG ARCH=x86_64

# Unpacks the zip as Lambda unpacks a layer: Info-ZIP's unzip keeps the zip's file modes (the
# launchers and Node.js are 0755). On the build machine's own platform: no emulation needed.
FROM --platform=$BUILDPLATFORM public.ecr.aws/amazonlinux/amazonlinux:2023 AS layer
ARG ARCH
ARG TARGETARCH
COPY --from=broker layer-with-node-${ARCH}.zip /tmp/layer.zip
RUN case "${ARCH}/${TARGETARCH}" in \
      x86_64/amd64 | arm64/arm64) ;; \
      *) echo "ARCH=${ARCH} is not the image's architecture (${TARGETARCH}): build x86_64 with --platform linux/amd64, arm64 with --platform linux/arm64 --build-arg ARCH=arm64" >&2; exit 1 ;; \
    esac \
 && dnf install -y unzip \
 && unzip -q /tmp/layer.zip -d /opt

FROM public.ecr.aws/lambda/java:21
COPY --from=layer /opt /opt
# The broker's switch (README, step 4). DATABRICKS_HOST and DATABRICKS_CLIENT_ID are the
# workspace's: set them on the function.
ENV DATABRICKS_TOKEN_BROKER_ENABLED=true

# The function, as AWS's guide to the Java base image builds it.
COPY target/classes ${LAMBDA_TASK_ROOT}
COPY target/dependency/* ${LAMBDA_TASK_ROOT}/lib/
CMD ["com.example.Handler::handleRequest"]
