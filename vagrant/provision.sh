#!/usr/bin/env bash
# Provision a Vagrant VM as a mohlog hub or agent: provision.sh hub|agent HUB_IP
set -euo pipefail
role=$1 hub_ip=$2
home=/opt/mohlog
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq make git >/dev/null
make -C "$home" setup
install -d -m 0755 /etc/mohlog
case "$role" in
  hub)
    sed "s#127.0.0.1:7480#0.0.0.0:7480#" "$home/deploy/systemd/mohlog-hub.service" \
      > /etc/systemd/system/mohlog-hub.service
    systemctl daemon-reload
    systemctl enable --now mohlog-hub
    for _ in $(seq 60); do [ -s /var/lib/mohlog/admin.token ] && break; sleep 1; done
    # Register the agents' shared ingest token (generated on the host by the Vagrantfile).
    if ! "$home/.venv/bin/mohlog" token list --hub http://127.0.0.1:7480 \
         --token-file /var/lib/mohlog/admin.token | grep -q vagrant-agents; then
      "$home/.venv/bin/mohlog" token create --role ingest --name vagrant-agents \
        --value "$(cat /etc/mohlog/shared/agent.token)" \
        --hub http://127.0.0.1:7480 --token-file /var/lib/mohlog/admin.token >/dev/null
    fi
    echo "hub ready on $hub_ip:7480; admin token in /var/lib/mohlog/admin.token"
    ;;
  agent)
    if [ ! -s /etc/mohlog/shared/agent.token ]; then
      echo "no ingest token yet: put it in vagrant/.tokens/agent.token, then 'vagrant provision'" >&2
      exit 1
    fi
    install -m 0600 /etc/mohlog/shared/agent.token /etc/mohlog/agent.token
    echo "MOHLOG_HUB=http://$hub_ip:7480" > /etc/mohlog/agent.env
    cp "$home/deploy/systemd/mohlog-agent.service" /etc/systemd/system/
    systemctl daemon-reload
    systemctl enable --now mohlog-agent
    ;;
  *) echo "usage: $0 hub|agent HUB_IP" >&2; exit 2 ;;
esac
