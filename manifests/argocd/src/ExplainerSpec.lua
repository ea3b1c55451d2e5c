-- Argo CD health of a Kustos ExplainerSpec, read from the conditions the operator writes
-- (Ready, Degraded).
--#include common.lua

local ready = condition(status, "Ready")
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = say(ready)
  return hs
end

-- Ready False or Unknown without Degraded: the sidecar is being added or is starting.
return starting(ready)
