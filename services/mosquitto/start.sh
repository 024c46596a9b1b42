# Mosquitto with the home's MQTT users: `smarthome keys` made each user's password (/keys/USER.mqtt-password)
# and the ACL (/keys/mosquitto.acl) from the config; the passwords are hashed here, at every start, into the
# container's own tmpfs, so no secret is ever in the image and none is on a command line.
set -eu
umask 077
: > /tmp/passwd
for file in /keys/*.mqtt-password; do
  [ -e "$file" ] || { echo "mosquitto: no MQTT passwords in /keys: run the keys service first" >&2; exit 2; }
  printf '%s:%s\n' "$(basename "$file" .mqtt-password)" "$(cat "$file")" >> /tmp/passwd
done
mosquitto_passwd -U /tmp/passwd
exec mosquitto -c /etc/mosquitto/smarthome.conf
