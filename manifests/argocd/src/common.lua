local hs = {}

local function condition(status, kind)
  for _, c in ipairs(status.conditions or {}) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function say(c)
  local reason = c.reason or ""
  if c.message ~= nil and c.message ~= "" then
    return reason .. ": " .. c.message
  end
  return reason
end

-- Ready False or Unknown without Degraded: the sidecar or rollout is still coming up.
local function starting(ready)
  hs.status = "Progressing"
  if ready ~= nil then
    hs.message = say(ready)
  else
    hs.message = "Waiting for the Ready condition"
  end
  return hs
end

local status = obj.status
if status == nil or status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Kustos operator to report status"
  return hs
end

-- A spec the operator has not seen yet: whatever the conditions say is about an older
-- generation, so never Healthy (the same rule Argo CD applies to Deployments).
local generation = obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the Kustos operator to observe generation " .. generation
  return hs
end

-- Degraded wins over Progressing: a reconcile that keeps failing (a missing Secret) also
-- reports Progressing=True, and Argo CD must not wait on it forever.
local degraded = condition(status, "Degraded")
if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = say(degraded)
  return hs
end
