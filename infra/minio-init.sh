#!/bin/sh
# One-shot MinIO setup of the compose stack (its `minio-init` service, in the MinIO image, which
# has `mc`); safe to run again. With the root account: the bucket `ttft` of the archive and the
# inbox, and the workers' own user TTFT_S3_ACCESS_KEY, allowed that bucket and nothing else.
# Prints no secret: `mc` reads the root account from MC_HOST_local, never from its command line.
set -eu

: "${MINIO_ROOT_USER:?}" "${MINIO_ROOT_PASSWORD:?}" "${TTFT_S3_ACCESS_KEY:?}" "${TTFT_S3_SECRET_KEY:?}"
if [ "$TTFT_S3_ACCESS_KEY" = "$MINIO_ROOT_USER" ]; then
    echo "TTFT_S3_ACCESS_KEY must differ from MINIO_ROOT_USER: the workers get their own user" >&2
    exit 1
fi

MC_HOST_local="http://${MINIO_ROOT_USER}:${MINIO_ROOT_PASSWORD}@minio:9000"
export MC_HOST_local

mc mb --ignore-existing local/ttft

policy="${TMPDIR:-/tmp}/ttft-archive-policy.json"
cat > "$policy" <<'JSON'
{
  "Version": "2012-10-17",
  "Statement": [
    {
      "Effect": "Allow",
      "Action": ["s3:GetBucketLocation", "s3:ListBucket", "s3:ListBucketMultipartUploads"],
      "Resource": ["arn:aws:s3:::ttft"]
    },
    {
      "Effect": "Allow",
      "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload",
                 "s3:ListMultipartUploadParts"],
      "Resource": ["arn:aws:s3:::ttft/*"]
    }
  ]
}
JSON
mc admin policy create local ttft-archive "$policy"

# the secret is set anew on every run, so a changed TTFT_S3_SECRET_KEY takes effect on `up`
mc admin user add local "$TTFT_S3_ACCESS_KEY" "$TTFT_S3_SECRET_KEY" > /dev/null
# attaching fails on a rerun, the policy being attached already: then check that it is
# (plain shell, no grep: the MinIO image is minimal)
if ! mc admin policy attach local ttft-archive --user "$TTFT_S3_ACCESS_KEY" 2> /dev/null; then
    case "$(mc admin user info local "$TTFT_S3_ACCESS_KEY")" in
        *PolicyName:*ttft-archive*) ;;
        *) echo "could not attach the policy ttft-archive to $TTFT_S3_ACCESS_KEY" >&2; exit 1 ;;
    esac
fi
echo "bucket ttft and user $TTFT_S3_ACCESS_KEY ready"
