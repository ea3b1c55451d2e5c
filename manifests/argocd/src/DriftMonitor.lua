-- Argo CD health of a Kustos DriftMonitor, read from the conditions the operator writes
-- (Ready, DriftDetected, Degraded). Drift in the served data is not a fault of the
-- resource: the DriftMonitor stays Healthy and says so in the message (alert on drift with
-- the KustosDriftDetected Prometheus rule).
--#include common.lua

local ready = condition(status, "Ready")
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  local drift = condition(status, "DriftDetected")
  if drift ~= nil and drift.status == "True" then
    hs.message = "Drift detected: " .. say(drift)
  else
    hs.message = say(ready)
  end
  return hs
end

-- Ready False or Unknown without Degraded: the sidecar is being added or is starting.
return starting(ready)
