-- Argo CD health of a Kustos ModelDeployment, read from the conditions the operator writes
-- (Ready, Progressing, Degraded; SecretsReady when Vault secrets are synced).
--#include common.lua
local secrets = condition(status, "SecretsReady")
if secrets ~= nil and secrets.status == "False" then
  hs.status = "Degraded"
  hs.message = say(secrets)
  return hs
end

local ready = condition(status, "Ready")
if ready ~= nil and ready.status == "False" and ready.reason == "ScaledToZero" then
  hs.status = "Suspended"
  hs.message = say(ready)
  return hs
end

local progressing = condition(status, "Progressing")
if progressing ~= nil and progressing.status == "True" then
  hs.status = "Progressing"
  hs.message = say(progressing)
  return hs
end

if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = say(ready)
  return hs
end
if ready ~= nil and ready.status == "False" then
  -- Not ready and not rolling out: the pods went away after the rollout finished.
  hs.status = "Degraded"
  hs.message = say(ready)
  return hs
end

hs.status = "Progressing"
hs.message = "Waiting for the Ready condition"
return hs
